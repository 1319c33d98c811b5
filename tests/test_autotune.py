"""Levers chosen on the machine (issue 17): bf16 only where the hardware has it, a probe that never picks a
path slower than plain, a cache that makes reruns plan the same, and epochs / samples planned to a budget.

No test here depends on how fast anything runs: the probe's timings are fake (a fake clock, or a fake
probe) wherever the outcome is asserted.
"""

from __future__ import annotations

import pytest
import torch

from difflab import autotune, evaluation_plan, fastpath, planning
from difflab.autotune import Candidate, Measured
from difflab.config import AUTO_FAST, FastPath, PartBConfig
from difflab.stages import STAGES

AVX2_ONLY = {"avx512_bf16": False, "amx": False}


def _capability(monkeypatch, avx512_bf16: bool, amx: bool) -> None:
    """Make torch's CPU capability queries report the given hardware."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: avx512_bf16, raising=False)
    monkeypatch.setattr(torch._C._cpu, "_is_amx_tile_supported", lambda: amx, raising=False)


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def runner(self, seconds_per_call: float, out: torch.Tensor, setup_s: float = 0.0, items: int = 10):
        def make() -> autotune.Runner:
            self.now += setup_s

            def run():
                self.now += seconds_per_call

            return run, items, out

        return make


def _fake_probe(clock: FakeClock, per_call: dict[str, float], outs: dict[str, torch.Tensor] | None = None,
                budget_s: float = 10.0, eligible: dict[str, bool] | None = None) -> list[Measured]:
    ref = torch.ones(8)
    cands = [Candidate(name, {"name": name}, (eligible or {}).get(name, True)) for name in per_call]
    makers = {name: clock.runner(s, (outs or {}).get(name, ref)) for name, s in per_call.items()}
    return autotune.probe(cands, lambda c: makers[c.name](), budget_s, tolerance=0.02, clock=clock)


# -- the hardware decides bf16 ---------------------------------------------------------------------------------
def test_avx2_only_cpu_never_gets_bf16(monkeypatch):
    _capability(monkeypatch, **AVX2_ONLY)
    assert autotune.bf16_native("cpu") is False
    auto = FastPath(**AUTO_FAST)
    for levers, train in ((planning.TRAIN_LEVERS, True), (planning.SAMPLE_LEVERS, False)):
        cands = planning.candidates(auto, levers, "cpu", autotune.bf16_native("cpu"), allow_compile=False, train=train)
        assert len(cands) >= 2 and cands[0].name == "plain eager" and cands[0].eligible
        assert all(c.levers["amp"] == "none" and c.levers["sample_amp"] == "none" for c in cands)
    lv = fastpath.Levers.resolve(auto, "cpu")  # an unprobed auto config too
    assert not lv.amp and not lv.sample_amp


@pytest.mark.parametrize("hw", [{"avx512_bf16": True, "amx": False}, {"avx512_bf16": False, "amx": True}])
def test_bf16_is_a_candidate_where_the_cpu_has_it(monkeypatch, hw):
    """The converse, so the test above means something: AVX512-BF16 or AMX make bf16 a candidate."""
    _capability(monkeypatch, **hw)
    assert autotune.bf16_native("cpu") is True
    cands = planning.candidates(FastPath(**AUTO_FAST), planning.TRAIN_LEVERS, "cpu", True, False, train=True)
    assert any(c.levers["amp"] == "bf16" for c in cands)
    assert fastpath.Levers.resolve(FastPath(**AUTO_FAST), "cpu").amp


def test_auto_resolution_on_an_avx2_cpu_picks_no_bf16_end_to_end(monkeypatch, tmp_path):
    """The whole resolution (a real, tiny probe) on a machine that reports AVX2 only: whatever the timings,
    bf16 is never in the resolved levers, and the probe's tables say what was measured."""
    _capability(monkeypatch, **AVX2_ONLY)
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    cfg = _small_cfg(budget={"probe_max_s": 0.5})
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    plan = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu")
    assert plan.fast.amp == "none" and plan.fast.sample_amp == "none"
    assert "auto" not in plan.fast.model_dump().values()
    assert plan.train_probe[0].name == "plain eager" and len(plan.train_probe) >= 2
    assert plan.sample_probe and all(m.error < 1e-3 for m in plan.sample_probe)  # fp32 candidates agree
    assert "fast.resolved.amp" in plan.params() and "| plain eager |" in plan.probe_markdown()


def test_explicit_bf16_is_obeyed_with_a_warning(monkeypatch, tmp_path):
    _capability(monkeypatch, **AVX2_ONLY)
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    cfg = _small_cfg(fast={"amp": "bf16"})
    cands = planning.candidates(cfg.class_ddpm.fast, planning.TRAIN_LEVERS, "cpu", False, False, train=True)
    assert not cands[0].eligible  # plain is measured, but may not replace an explicit lever
    assert all(c.levers["amp"] == "bf16" for c in cands[1:])
    _fake(monkeypatch, {"plain eager": 100.0})
    plan = planning.resolve_stage(cfg, STAGES["class"], torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,)),
                                  "cpu")
    assert plan.fast.amp == "bf16"
    assert len(plan.warnings) == 1 and "fast.amp=bf16" in plan.warnings[0] and "AVX512-BF16" in plan.warnings[0]


# -- the probe never picks a slower path -----------------------------------------------------------------------
def test_probe_whose_candidates_are_all_slower_than_plain_picks_plain():
    clock = FakeClock()
    measured = _fake_probe(clock, {"plain eager": 0.10, "channels_last": 0.12, "frozen jit": 0.30})
    assert [m.name for m in measured] == ["plain eager", "channels_last", "frozen jit"]
    assert measured[1].ratio == pytest.approx(0.10 / 0.12) and measured[2].ratio == pytest.approx(1 / 3)
    assert autotune.choose(measured).name == "plain eager"
    assert len(measured[0].rates) >= autotune.MIN_ROUNDS


def test_probe_picks_the_fastest_within_tolerance_and_margin():
    clock = FakeClock()
    off = torch.ones(8) * 1.5  # a result 50 % away from plain's: outside tolerance however fast
    m = _fake_probe(clock, {"plain eager": 0.10, "a": 0.099, "b": 0.05, "c": 0.02},
                    outs={"c": off, "b": torch.ones(8) * 1.001})
    assert not m[3].within_tolerance and m[2].within_tolerance
    assert autotune.choose(m).name == "b"  # c is faster but wrong; a is within the noise margin of plain
    assert autotune.choose(_fake_probe(FakeClock(), {"plain eager": 0.10, "a": 0.099})).name == "plain eager"


def test_a_candidate_must_win_every_round():
    """Rounds share their load: a candidate twice as fast in one round and slower in the other is noise."""
    plain = Measured("plain eager", {}, rate=100.0, rates=[100.0, 100.0])
    lucky = Measured("lucky", {}, rate=140.0, rates=[200.0, 80.0])
    steady = Measured("steady", {}, rate=120.0, rates=[118.0, 122.0])
    assert autotune.choose([plain, lucky]).name == "plain eager"
    assert autotune.choose([plain, lucky, steady]).name == "steady"


def test_failed_candidates_are_recorded_never_chosen():
    clock = FakeClock()

    def make(c: Candidate):
        if c.name == "broken":
            raise RuntimeError("no oneDNN here")
        return clock.runner(0.1 if c.name == "plain eager" else 0.01, torch.ones(3))()

    m = autotune.probe([Candidate("plain eager", {}), Candidate("broken", {})], make, 5.0, 0.02, clock=clock)
    assert m[1].failed.startswith("RuntimeError") and autotune.choose(m).name == "plain eager"
    assert "failed: RuntimeError" in autotune.table(m)


def test_probe_stays_near_its_budget():
    clock = FakeClock()
    _fake_probe(clock, {"plain eager": 0.01, "a": 0.02, "b": 0.005}, budget_s=3.0)
    assert clock.now <= 3.0 * 1.2


def test_explicit_levers_choose_among_themselves():
    clock = FakeClock()
    m = _fake_probe(clock, {"plain eager": 0.01, "bf16": 0.1, "bf16 + channels_last": 0.08},
                    eligible={"plain eager": False})
    assert autotune.choose(m).name == "bf16 + channels_last"  # slower than plain, but asked for


# -- cached per machine: reruns resolve and plan the same ------------------------------------------------------
def _fake(monkeypatch, rates: dict[str, float], calls: list | None = None):
    """Replace the probe by one that reports the given rates (by candidate name; others half plain's)."""

    def probe(cands, make_runner, budget_s, tolerance, clock=None, sync=None):
        if calls is not None:
            calls.append([c.name for c in cands])
        plain = rates.get("plain eager", 100.0)
        out = [Measured(c.name, dict(c.levers), rate=rates.get(c.name, plain / 2), rates=[rates.get(c.name, plain / 2)] * 2,
                        eligible=c.eligible) for c in cands]
        for m in out:
            m.ratio = m.rate / plain
        return out

    monkeypatch.setattr(planning.autotune, "probe", probe)


def _small_cfg(fast: dict | None = None, evaluation: dict | None = None, class_ddpm: dict | None = None,
               **kw) -> PartBConfig:
    small = {"hidden": 4, "batch_size": 16, "num_timesteps": 20, "snapshot_epochs": [2, 10], "epochs": 10,
             "budget_epochs": True,  # given with epochs, so not pinned by them
             "samples_per_class": 1, "num_samples": 10,
             "fast": {**AUTO_FAST, **(fast or {})}}
    return PartBConfig(profile="quick", time_ddpm=small, class_ddpm={**small, **(class_ddpm or {})},
                       evaluation={"sample_batch_size": 20, "num_samples": 200, "budget_samples": True,
                                   "min_samples": 20, **(evaluation or {})}, **kw)


def test_rerun_reuses_the_cached_probe_and_plans_the_same(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    _capability(monkeypatch, **AVX2_ONLY)
    calls: list = []
    _fake(monkeypatch, {"plain eager": 100.0, "channels_last": 180.0, "fold BN + frozen jit": 400.0,
                        "fold BN": 300.0}, calls)
    cfg = _small_cfg()
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    first = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=4000)
    assert len(calls) == 2 and not first.cached  # training and sampling probes
    assert first.fast.channels_last is True and first.fast.sample_jit is True and first.fast.amp == "none"
    again = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=4000)
    assert len(calls) == 2 and again.cached  # no new probe
    assert again.fast == first.fast and again.epochs == first.epochs and again.stable_params() == first.stable_params()
    assert list((tmp_path / "autotune").glob("probe-*.json"))
    monkeypatch.setattr(torch, "get_num_threads", lambda: 7)  # another machine (thread count): probed anew
    planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=4000)
    assert len(calls) == 4


def test_epochs_planned_to_the_budget_between_floor_and_ceiling(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    _capability(monkeypatch, **AVX2_ONLY)
    _fake(monkeypatch, {"plain eager": 100.0})  # every lever slower: plain, at 100 img/s and 100 img-steps/s
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    budget = {"epoch_overhead_s": 0.0, "probe_max_s": 1.0, "overhead_share": 0.0, "shares": {"denoiser": 0.1, "time": 0.2, "class": 0.5,
                                                                      "evaluation": 0.2}}
    cfg = _small_cfg(budget_minutes=10, budget=budget)
    plan = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=1000)
    assert plan.fast.enabled is False and plan.train_rate == 100.0  # all slower than plain: plain
    # 300 s budget - 1 s probe - 3 draws of 10 digits x 20 steps at 100 img-steps/s (6 s) = 293 s of 10 s epochs
    assert plan.epochs_source == "budget" and plan.epochs == 10  # capped at the configured epochs
    cfg = _small_cfg(budget_minutes=1, budget=budget)  # 30 s: 2 epochs fit, the floor (snapshot 2 -> 3) wins
    plan = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=1000)
    assert plan.epochs == planning.budget_floor([2, 10]) == 3
    higher = _small_cfg(budget_minutes=1, budget=budget, class_ddpm={"budget_min_epochs": 7})
    assert planning.resolve_stage(higher, STAGES["class"], x, y, "cpu", n_train=1000).epochs == 7
    cfg = _small_cfg(budget_minutes=2, budget=budget)  # 60 s - 1 - 6 = 53 s: 5 epochs
    plan = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=1000)
    assert plan.epochs == 5 and "5 epochs planned" in plan.announce() and "100 img/s" in plan.announce()
    assert plan.apply(cfg.class_ddpm).epochs == 5
    pinned = PartBConfig.model_validate({**cfg.model_dump(), "class_ddpm": {**cfg.class_ddpm.model_dump(),
                                                                            "budget_epochs": False}})
    assert planning.resolve_stage(pinned, STAGES["class"], x, y, "cpu", n_train=1000).epochs == 10


def test_evaluation_samples_planned_to_the_budget(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    _capability(monkeypatch, **AVX2_ONLY)
    _fake(monkeypatch, {"plain eager": 100.0})
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    budget = {"judge_share": 0.0, "overhead_share": 0.0, "shares": {"denoiser": 0.1, "time": 0.2, "class": 0.5, "evaluation": 0.2}}
    cfg = _small_cfg(budget_minutes=1, budget=budget)  # evaluation: 12 s; 2 DDPMs x 20 steps at 100/s: 0.4 s each
    plans = {k: planning.resolve_stage(cfg, STAGES[k], x, y, "cpu") for k in ("time", "class")}
    ep = evaluation_plan.plan_evaluation(cfg, plans)
    assert ep.source == "budget" and ep.num_samples == 30 and ep.num_samples % 10 == 0
    assert ep.seconds_per_sample == {"time_ddpm": pytest.approx(0.2), "class_ddpm": pytest.approx(0.2)}
    assert evaluation_plan.plan_evaluation(_small_cfg(budget_minutes=0.01, budget=budget), plans).num_samples == 20  # floor
    fixed = _small_cfg(budget_minutes=1, budget=budget, evaluation={"budget_samples": False, "num_samples": 70})
    assert evaluation_plan.plan_evaluation(fixed, plans).num_samples == 70  # an explicit num_samples is kept


def test_the_overhead_share_is_set_aside_before_the_stages_split_the_budget(monkeypatch, tmp_path):
    """budget.overhead_share pays what no stage plan models (sample runs' figures, the judge, start-up): a stage
    plans its epochs in its share of the rest."""
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    _capability(monkeypatch, **AVX2_ONLY)
    _fake(monkeypatch, {"plain eager": 100.0})
    x, y = torch.rand(32, 1, 28, 28), torch.randint(0, 10, (32,))
    shares = {"denoiser": 0.1, "time": 0.2, "class": 0.5, "evaluation": 0.2}
    plans = {}
    for overhead in (0.0, 0.5):
        cfg = _small_cfg(budget_minutes=2, budget={"epoch_overhead_s": 0.0, "probe_max_s": 1.0, "shares": shares,
                                                   "overhead_share": overhead})
        plans[overhead] = planning.resolve_stage(cfg, STAGES["class"], x, y, "cpu", n_train=1000)
    assert plans[0.0].stage_budget_s == pytest.approx(60.0) and plans[0.5].stage_budget_s == pytest.approx(30.0)
    assert plans[0.0].epochs == 5 and plans[0.5].epochs < plans[0.0].epochs  # 60 s - 1 - 6 = 53 s: 5 epochs


def test_evaluation_replanned_from_the_time_left():
    """Stages that overran their shares leave the evaluation less: it draws what fits the rest of the budget
    (issue 17: run 2 ended 47 s over budget, the evaluation alone 29 s over its share)."""
    budget = {"judge_share": 0.1, "overhead_share": 0.0, "sampling_margin": 1.0, "shares": {"denoiser": 0.1, "time": 0.2, "class": 0.5, "evaluation": 0.2}}
    cfg = _small_cfg(budget_minutes=10, budget=budget, evaluation={"min_samples": 20})  # 600 s, evaluation 120 s
    start = evaluation_plan.EvalPlan(200, "budget", 120.0, {"time_ddpm": 0.2, "class_ddpm": 0.3}, 100.0)
    # on time: 480 s used, 600 - 480 - 12 kept back = 108 s at 0.5 s per sample -> 216, capped at the 200 planned
    assert evaluation_plan.fit_time_left(cfg, start, 480.0).num_samples == 200
    late = evaluation_plan.fit_time_left(cfg, start, 540.0)  # 60 s late: 48 s left -> 96 -> 90 (a multiple of 10)
    assert late.num_samples == 90 and late.estimate_s == pytest.approx(45.0)
    assert late.params()["plan.num_samples"] == 90 and late.params()["plan.num_samples_at_start"] == 200
    assert "90 samples per DDPM (planned 200 at start)" in late.announce()
    assert evaluation_plan.fit_time_left(cfg, start, 700.0).num_samples == 20  # over budget already: the floor
    careful = _small_cfg(budget_minutes=10, evaluation={"min_samples": 20}, budget={**budget, "sampling_margin": 1.5})
    assert evaluation_plan.fit_time_left(careful, start, 540.0).num_samples == 60  # 48 s / 1.5 = 32 s -> 64 -> 60
    fixed = evaluation_plan.EvalPlan(70, "config", None, {"time_ddpm": 0.2}, 14.0)
    assert evaluation_plan.fit_time_left(cfg, fixed, 700.0) is fixed  # an explicit num_samples is kept


# -- config: explicit epochs pin, dumped configs round-trip ----------------------------------------------------
def test_explicit_epochs_pin_and_profile_epochs_are_planned():
    quick = PartBConfig(profile="quick")
    assert quick.budget_minutes == 10 and quick.time_ddpm.budget_epochs and quick.evaluation.budget_samples
    assert quick.time_ddpm.fast.amp == "auto" and quick.denoiser.fast.sample_jit == "auto"
    pinned = PartBConfig(profile="quick", time_ddpm={"epochs": 36}, evaluation={"num_samples": 300})
    assert pinned.time_ddpm.epochs == 36 and not pinned.time_ddpm.budget_epochs
    assert pinned.class_ddpm.budget_epochs and not pinned.evaluation.budget_samples
    for c in (quick, pinned):  # what Prefect does with a flow parameter
        assert PartBConfig.model_validate(c.model_dump(mode="json")) == c
    tiny = PartBConfig(profile="tiny")
    assert tiny.budget_minutes is None and not tiny.class_ddpm.fast.enabled and not tiny.class_ddpm.budget_epochs
    course = PartBConfig(profile="course")
    assert course.budget_minutes is None and course.class_ddpm.epochs == 20 and not course.class_ddpm.budget_epochs


def test_tiny_profile_is_not_probed(monkeypatch, tmp_path):
    monkeypatch.setenv("DIFFLAB_WORKDIR", str(tmp_path))
    calls: list = []
    _fake(monkeypatch, {}, calls)
    cfg = PartBConfig(profile="tiny")
    plan = planning.resolve_stage(cfg, STAGES["class"], torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,)), "cpu")
    assert calls == [] and plan.fast == cfg.class_ddpm.fast and plan.epochs == 2 and plan.epochs_source == "config"


def test_plan_arithmetic():
    assert autotune.plan_epochs(100, 100, 1000, floor=2, ceiling=50, epoch_overhead_s=0) == 10
    assert autotune.plan_epochs(100, 100, 1000, floor=2, ceiling=50, epoch_overhead_s=10) == 5
    assert autotune.plan_epochs(5, 100, 1000, floor=2, ceiling=50) == 2
    assert autotune.plan_epochs(1e6, 100, 1000, floor=2, ceiling=50) == 50
    assert autotune.plan_samples(100, 0.3, floor=20, ceiling=1000) == 330
    assert autotune.plan_samples(1, 0.3, floor=20, ceiling=1000) == 20
    assert planning.budget_floor([1, 5]) == 2 and planning.budget_floor([12, 36]) == 13 and planning.budget_floor([7]) == 1


def test_ticker_lines_say_elapsed_estimate_and_eta():
    from tasks.progress import Ticker

    lines: list[str] = []
    t = Ticker("evaluation of class_ddpm", 100.0, lines.append, every_s=3600)
    with t:
        pass
    assert lines[0].startswith("evaluation of class_ddpm: started, about 100 s, ETA ")
    assert lines[-1].startswith("evaluation of class_ddpm: done in ")
    assert "40 s of about 100 s (40 %), ETA" in t.line(t.started + 40)
    assert "20 s past its estimate" in t.line(t.started + 120)


def test_cuda_candidates_cover_graph_bf16_and_layout():
    """On a CUDA device (no GPU needed to build the list): CUDA graph x bf16 x channels_last for training,
    CUDA graph x bf16 x channels_last for sampling (no TorchScript freezing: CPU only), plain first."""
    auto = FastPath(**AUTO_FAST)
    train = planning.candidates(auto, planning.TRAIN_LEVERS, "cuda", bf16=True, allow_compile=False, train=True)
    assert train[0].name == "plain eager" and len(train) == 1 + 2 * 2 * 2
    assert {"channels_last + bf16 + CUDA graph"} <= {c.name for c in train}
    sample = planning.candidates(auto, planning.SAMPLE_LEVERS, "cuda", bf16=True, allow_compile=False, train=False)
    assert len(sample) == 1 + 2 * 2 * 2 and not any(c.levers["sample_jit"] for c in sample)
    no_bf16 = planning.candidates(auto, planning.TRAIN_LEVERS, "cuda", bf16=False, allow_compile=False, train=True)
    assert not any(c.levers["amp"] == "bf16" for c in no_bf16)
    assert any(c.levers["compile"] for c in planning.candidates(auto, planning.TRAIN_LEVERS, "cpu", False, True, True))


def test_ticker_without_an_estimate_reports_elapsed_only():
    from tasks.progress import Ticker

    lines: list[str] = []
    with Ticker("the judge", 0.0, lines.append, every_s=3600) as t:
        pass
    assert lines[0] == "the judge: started" and "estimate" not in lines[-1]
    assert t.line(t.started + 31) == "the judge: 31 s so far"
