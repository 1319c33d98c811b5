"""The Stage object: trajectory labels, checkpoints that rebuild themselves, and the layering it buys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from difflab import stages
from difflab.config import PartBConfig
from difflab.ddpm import DDPMSchedule
from difflab.sampling import draw
from difflab.train import save_checkpoint
from difflab.unet import build_model

ROOT = Path(__file__).resolve().parents[1]


class OracleEps(nn.Module):
    """The optimal noise estimate for a data set of one image x*: eps = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t)."""

    def __init__(self, schedule: DDPMSchedule, target: torch.Tensor):
        super().__init__()
        self.schedule, self.target = schedule, target
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x, t_over_T, c=None):
        t = (t_over_T * self.schedule.num_timesteps).round().long()
        ab = self.schedule.alpha_bars[t].view(-1, 1, 1, 1)
        return (x - ab.sqrt() * self.target) / (1 - ab).sqrt()


def _fit(x: torch.Tensor, target: torch.Tensor) -> tuple[float, float]:
    """x = a * target + noise of variance v, fitted over every pixel of every sample: (a, v)."""
    tt = target.expand_as(x).flatten()
    xf = x.flatten()
    a = float(((xf - xf.mean()) * (tt - tt.mean())).mean() / tt.var())
    return a, float((xf - a * tt).var())


def test_each_trajectory_frame_is_labelled_with_the_timestep_it_shows():
    """With the optimal estimator for one image x*, the posterior mean keeps E[x_t] = sqrt(ab_t) x* at every
    step (B.2's sqrt(beta_t) noise changes only the variance); a steep, short schedule whose ab_T is ~0 makes
    neighbouring timesteps easy to tell apart (sqrt(ab) differs by >= 0.03 between them)."""
    torch.manual_seed(0)
    schedule = DDPMSchedule(10, 0.02, 0.95)
    target = torch.rand(1, 1, 28, 28) * 2 - 1
    s = draw(OracleEps(schedule, target), schedule, 3000, seed=0, frames=4)
    assert s.frame_timesteps[0] == 10 and s.frame_timesteps[-1] == 0
    assert len(s.frames) == len(s.frame_timesteps)
    # The spec's t is 1-based: x_t ~ N(sqrt(ab_t) x*, 1 - ab_t) with ab_t = alpha_bars[t - 1]; x_0 is the image,
    # and x_T the pure noise the sampler starts from.
    expected = {0: (1.0, 0.0), schedule.num_timesteps: (0.0, 1.0)}
    for frame, t in zip(s.frames, s.frame_timesteps):
        a, v = _fit(frame, target)
        if t in expected:
            assert (a, v) == pytest.approx(expected[t], abs=0.01), t
        else:
            assert a == pytest.approx(float(schedule.alpha_bars[t - 1]) ** 0.5, abs=0.01), t


def test_a_checkpoint_rebuilds_its_stage_model_and_schedule(tmp_path):
    cfg = PartBConfig(profile="tiny")
    for key, st in stages.STAGES.items():
        scfg = st.config(cfg)
        model = build_model(st.model_kind, hidden=4)
        path = save_checkpoint(tmp_path / f"{key}.pt", model, st.model_kind, st.checkpoint_extra(scfg))
        trained = stages.load(path)
        assert trained.stage is st
        assert trained.extra["config"] == scfg.model_dump(mode="json")  # the stage's whole config, as DiT's args
        if st.generative:
            assert trained.schedule.num_timesteps == scfg.num_timesteps
            assert torch.equal(trained.schedule.betas, st.schedule(scfg).betas)
        else:
            assert trained.schedule is None


def test_stage_losses_are_the_spec_losses():
    cfg = PartBConfig(profile="tiny")
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    for st in stages.STAGES.values():
        scfg = st.config(cfg)
        sched = st.schedule(scfg)
        model = build_model(st.model_kind, hidden=4)
        a = st.loss(scfg, sched)(model, x, y, torch.Generator().manual_seed(1))
        b = st.loss(scfg, sched)(model, x, y, torch.Generator().manual_seed(1))
        assert a.ndim == 0 and torch.equal(a, b) and a > 0


STAGE_BRANCH = re.compile(r"""(==|!=)\s*["'](denoiser|time|class)["']|["'](denoiser|time|class)["']\s+(not\s+)?in\s""")


def test_no_module_outside_the_stage_object_branches_on_a_stage_name():
    offenders = []
    for folder in ("tasks", "flows", "src/difflab"):
        for path in (ROOT / folder).rglob("*.py"):
            if path.name == "stages.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if STAGE_BRANCH.search(line):
                    offenders.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_tasks_never_import_flows():
    imports = [f"{p.name}: {line.strip()}" for p in (ROOT / "tasks").glob("*.py")
               for line in p.read_text().splitlines() if re.match(r"\s*(from|import)\s+flows\b", line)]
    assert not imports, imports


class PixelJudge(nn.Module):
    """Reads the digit written as 0.1 * d in the top-left pixel: a judge whose answers a test controls."""

    def __init__(self):
        super().__init__()
        from difflab.config import JudgeConfig

        self.cfg = JudgeConfig()
        self.dummy = nn.Parameter(torch.zeros(()))

    def forward(self, x):
        d = (x[:, 0, 0, 0] * 10).round().long().clamp(0, 9)
        return torch.nn.functional.one_hot(d, 10).float() * 50


def test_digit_shares_are_what_the_judge_read():
    digits = torch.tensor([0] * 5 + [3] * 3 + [9] * 2)
    x = torch.zeros(10, 1, 28, 28)
    x[:, 0, 0, 0] = digits / 10
    shares = stages.digit_shares(PixelJudge(), x)
    assert shares == pytest.approx([0.5, 0, 0, 0.3, 0, 0, 0, 0, 0, 0.2])
