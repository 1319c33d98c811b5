"""The fast path computes what the plain path computes: the same step, the same loss curve, the same samples.

Speed itself is measured as ratios by bench/speed.py and bench/gpu_check.py, never timed here.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

from difflab import fastpath
from difflab.config import FastPath, PartBConfig, flatten_params
from difflab.train import plan_training
from difflab.ddpm import DDPMSchedule, ddpm_loss
from difflab.sampling import digit_labels, draw
from difflab.train import TrainInputs, TrainSettings, fit
from difflab.unet import build_model

REPO = Path(__file__).resolve().parents[1]
FAST = FastPath(enabled=True, channels_last=True, amp="none", sample_channels_last=True)
SCHEDULE = DDPMSchedule(20)


def _batch(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def _loss(m, x, y, g):
    return ddpm_loss(m, SCHEDULE, x, y, 0.1, g)


def _trained_bn(model):
    """Non-trivial BatchNorm statistics, as a trained model has."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.mark.parametrize("fast", [FAST, FastPath(enabled=True, channels_last=False, amp="none")])
def test_fast_and_plain_compute_the_same_step(fast):
    """Same weights, batch and noise: the same loss, gradients and updated weights (float tolerance)."""
    x, y = _batch()
    torch.manual_seed(0)
    init = build_model("class", hidden=4).state_dict()
    results = []
    for f in (None, fast):
        levers = fastpath.Levers.resolve(f, "cpu")
        model = build_model("class", hidden=4)
        model.load_state_dict(init)
        model = fastpath.prepare_model(model, levers).train()
        opt = fastpath.make_optimizer(model, 1e-3, levers, torch.device("cpu"))
        step = fastpath.TrainStep(model, opt, _loss, torch.Generator().manual_seed(3), levers, torch.device("cpu"), 16)
        loss = step(fastpath.to_layout(x, levers), y)
        assert loss.requires_grad is False and loss.dim() == 0
        grads = [p.grad.clone() for p in model.parameters()]
        results.append((loss, grads, {k: v.clone() for k, v in model.state_dict().items()}))
    (l0, g0, s0), (l1, g1, s1) = results
    assert torch.allclose(l0, l1, rtol=1e-5)
    for a, b in zip(g0, g1):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6)
    # Adam divides by |grad|: where a gradient is float noise (a conv bias before BatchNorm has a true
    # gradient of 0) its sign, and so the update's, is arbitrary. Elsewhere the updates agree tightly.
    names = [k for k, _ in build_model("class", hidden=4).named_parameters()]
    for name, g in zip(names, g0):
        real = g.abs() > 1e-5
        assert torch.allclose(s0[name][real], s1[name][real], rtol=1e-5, atol=1e-6), name
    for k in s0:
        assert torch.allclose(s0[k].float(), s1[k].float(), atol=2.5e-3), k  # at most one Adam step (lr 1e-3) apart


def test_fast_loss_curve_follows_the_plain_one():
    x, y = _batch(96, seed=1)
    plan = plan_training(3, 32, [], 96, False, lr_final_factor=0.1)
    plain = fit(TrainSettings("class", {"hidden": 4}, plan, 3e-3, 32), TrainInputs(x, y, _loss))
    fast = fit(TrainSettings("class", {"hidden": 4}, plan, 3e-3, 32, fast=FAST.speed()), TrainInputs(x, y, _loss))
    assert len(plain.losses) == len(fast.losses) == 9
    assert all(isinstance(v, float) for v in fast.losses)
    for a, b in zip(plain.losses, fast.losses):
        assert abs(a - b) < 1e-4 * max(1.0, abs(a))
    assert plain.losses != [plain.losses[0]] * 9  # the curve moves, so following it means something


def test_bf16_autocast_loss_curve_stays_close():
    """bf16 rounds, so not float tolerance: within 1 % of the plain curve, step by step."""
    x, y = _batch(96, seed=2)
    plan = plan_training(3, 32, [], 96, False, lr_final_factor=0.1)
    plain = fit(TrainSettings("class", {"hidden": 4}, plan, 3e-3, 32), TrainInputs(x, y, _loss))
    bf16 = fit(TrainSettings("class", {"hidden": 4}, plan, 3e-3, 32,
                             fast=FastPath(enabled=True, channels_last=True, amp="bf16").speed()),
               TrainInputs(x, y, _loss))
    assert plain.losses != bf16.losses  # bf16 really ran
    for a, b in zip(plain.losses, bf16.losses):
        assert abs(a - b) < 0.01 * a


def test_fold_batchnorm_gives_the_same_outputs():
    model = _trained_bn(build_model("class", hidden=8))
    folded = fastpath.fold_batchnorm(model)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x, t, c = torch.randn(6, 1, 28, 28), torch.rand(6), torch.eye(10)[:6]
    with torch.no_grad():
        assert torch.allclose(folded(x, t, c), model(x, t, c), atol=1e-5, rtol=1e-4)


def test_fast_sampler_draws_the_same_samples():
    model = _trained_bn(build_model("class", hidden=4))
    labels = digit_labels(1)
    plain = draw(model, SCHEDULE, 0, seed=7, labels=labels, guidance=5.0, frames=4)
    fast = draw(model, SCHEDULE, 0, seed=7, labels=labels, guidance=5.0, frames=4, fast=FAST)
    assert torch.allclose(plain.images, fast.images, atol=1e-4)
    assert plain.frame_timesteps == fast.frame_timesteps and len(plain.frames) == len(fast.frames)
    other = draw(model, SCHEDULE, 0, seed=8, labels=labels, guidance=5.0, fast=FAST)
    assert not torch.allclose(plain.images, other.images, atol=1e-2)  # far below what a seed changes
    tmodel = _trained_bn(build_model("time", hidden=4))
    a = draw(tmodel, SCHEDULE, 5, seed=1).images
    b = draw(tmodel, SCHEDULE, 5, seed=1, fast=FAST).images
    assert torch.allclose(a, b, atol=1e-4)


def test_each_lever_is_a_param_and_plain_is_one_switch_away():
    cfg = PartBConfig(profile="quick", class_ddpm={"fast": {"enabled": False}})
    params = flatten_params(cfg)
    assert params["class_ddpm.fast.enabled"] is False
    for lever in FastPath.model_fields:
        assert f"class_ddpm.fast.{lever}" in params and f"denoiser.fast.{lever}" in params
    assert fastpath.Levers.resolve(cfg.class_ddpm.fast, "cpu") == fastpath.Levers()
    # Issue 17: the course profile no longer fixes the plain path; its levers are `auto`, resolved per machine
    # (never slower than plain), and the spec's plain path is still the one switch above away.
    course = PartBConfig(profile="course").class_ddpm.fast
    assert course.enabled and course.amp == "auto" and course.channels_last == "auto"
    assert PartBConfig(profile="tiny").class_ddpm.fast.enabled is False  # tests and smoke runs stay plain


def test_gpu_levers_stay_off_on_a_cpu():
    levers = fastpath.Levers.resolve(FastPath(enabled=True, cuda_graph=True, amp="bf16", fused_adam=True), "cpu")
    assert not (levers.cuda_graph or levers.fused_adam or levers.tf32 or levers.sample_cuda_graph)
    assert levers.channels_last


def test_gpu_check_runs_at_tiny_size(tmp_path):
    """The one GPU command, at tiny size on the CPU: every part finishes and prints its row."""
    spec = importlib.util.spec_from_file_location("gpu_check", REPO / "bench" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    report = gpu_check.main(["--tiny", "--out", str(tmp_path), "--deliverables", str(tmp_path / "part_b"),
                             "--data", str(tmp_path / "mnist.pt")])
    rows = report["rows"]
    parts = {r["part"] for r in rows}
    assert {"part_b", "train", "sample", "deepfloyd"} <= parts
    assert not [r for r in rows if r.get("error")], [r for r in rows if r.get("error")]
    assert (tmp_path / "gpu_check.md").read_text().count("|") > 10
    assert json.loads((tmp_path / "gpu_check.json").read_text())["rows"]
    assert len(list((tmp_path / "part_b").glob("*.png"))) >= 10 and (tmp_path / "class_ddpm_final_samples.png").is_file()


def test_bench_ratio_pairs_rounds_so_drift_cancels():
    """bench/speed.py's ratio: the median of per-round ratios. A machine that slows down between rounds (here
    to half speed in round 2) leaves a variant that is always 4 % slower than plain at 0.96x, where a ratio
    of the two medians would read it by which rounds the medians fall in."""
    spec = importlib.util.spec_from_file_location("speed", REPO / "bench" / "speed.py")
    speed = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(speed)
    plain = [100.0, 50.0, 100.0, 50.0]
    variant = [p * 0.96 for p in [50.0, 100.0, 50.0, 100.0]]  # rounds in the other order: the medians tie
    assert speed.paired_ratio([p * 0.96 for p in plain], plain) == pytest.approx(0.96)
    assert speed.paired_ratio(variant, plain) != pytest.approx(0.96)  # unpaired rounds are not cancelled
    assert speed.paired_ratio(plain, plain) == 1.0
