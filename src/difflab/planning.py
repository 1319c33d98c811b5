"""A Part B stage's speed levers and epoch plan, resolved on the machine at hand (difflab.autotune).

`resolve_stage` turns a stage config whose levers say `auto` into a concrete one: bf16 only where the
hardware has it, the other levers by a short probe on the stage's real network and batch shape (cached
per machine under `<workdir>/autotune`, so a rerun reuses it and keeps the stage's cache key), and, when
the run has a `budget_minutes` and the stage `budget_epochs`, the epochs that fit the stage's share of the
budget at the measured speed; `difflab.evaluation_plan` sizes the evaluation's samples the same way.
Plain PyTorch and the config classes only: the tasks log what it returns.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from difflab import autotune, fastpath
from difflab.autotune import Candidate, Measured
from difflab.config import FastPath, PartBConfig, TrainConfig, workdir
from difflab.locks import file_lock
from difflab.unet import IMAGE_SIZE, NUM_CLASSES, build_model

log = logging.getLogger(__name__)

TRAIN_LEVERS = ("channels_last", "amp", "compile", "cuda_graph")
"""Training levers a probe decides when they say auto (TF32 is the hardware's: on CUDA 8.0+)."""
SAMPLE_LEVERS = ("sample_jit", "sample_channels_last", "sample_amp", "sample_compile", "sample_cuda_graph")
OFF: dict[str, Any] = {"enabled": False, "channels_last": False, "compile": False, "cuda_graph": False, "amp": "none",
                       "tf32": False, "cudnn_benchmark": False, "fused_adam": False, "sample_channels_last": False,
                       "sample_fold_bn": False, "sample_jit": False, "sample_compile": False,
                       "sample_cuda_graph": False, "sample_amp": "none"}
"""Every lever off: what the plain path runs."""
TRAIN_TOLERANCE = 0.02
"""A training candidate's first loss (same weights, batch and noise) within 2 % of plain's (bf16 rounds)."""
SAMPLE_TOLERANCE = 0.02
"""A sampling candidate's noise estimate within 2 % (relative L2) of plain's."""
SAMPLE_PROBE_BATCH = 100
"""The sampling probe's batch (at most the evaluation's): big batches cost seconds per call on a slow CPU."""
PROBE_SEED = 0


def cache_dir():
    return workdir() / "autotune"


@dataclass
class StagePlan:
    """What a stage runs with on this machine, and why."""

    stage: str
    """The config section: denoiser, time_ddpm, class_ddpm."""
    fast: FastPath
    """The levers resolved: no `auto` left."""
    epochs: int
    epochs_source: str
    """budget (planned to fit budget_minutes) or config."""
    train_rate: float = 0.0
    """Training images per second of the chosen path, as probed (0: not probed)."""
    sample_rate: float = 0.0
    """Denoising steps of one image per second of the chosen sampling path, as probed (0: not probed)."""
    stage_budget_s: float | None = None
    probe_budget_s: float = 0.0
    probe_seconds: float = 0.0
    """What this call's probe took (0 when the cache answered)."""
    cached: bool = False
    estimate_s: float = 0.0
    """About how long the stage takes (training, snapshot figures, sample run), from the probe's rates."""
    train_probe: list[Measured] = field(default_factory=list)
    sample_probe: list[Measured] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    n_train: int = 0
    device_type: str = "cpu"
    device: str = ""
    """The device the probe ran on, in words (CPU model and torch's ISA level, or the GPU's name)."""

    def apply(self, scfg: TrainConfig) -> TrainConfig:
        """The stage config to train with: resolved levers and, when planned, the planned epochs."""
        update: dict[str, Any] = {"fast": self.fast}
        if self.epochs_source == "budget":
            update.update(epochs=self.epochs, match_course_steps=False)  # the plan counts real epochs already
        return scfg.model_copy(update=update)

    def resolved_params(self) -> dict[str, Any]:
        return {f"fast.resolved.{k}": v for k, v in self.fast.model_dump().items()}

    def params(self) -> dict[str, Any]:
        """`fast.resolved.*` and `plan.*` for the stage's run (the flow's run gets them prefixed by the stage)."""
        out = {**self.resolved_params(), "plan.epochs_source": self.epochs_source,
               "plan.probe_cached": self.cached, "plan.probe_seconds": round(self.probe_seconds, 2),
               "plan.estimate_s": round(self.estimate_s, 1)}
        return {**out, **self.stable_params()}

    def stable_params(self) -> dict[str, Any]:
        """The params that are the same on every rerun on this machine (for the flow's run, where MLflow
        refuses a param changed): the resolved levers, the planned epochs and the measured speeds."""
        out: dict[str, Any] = {**self.resolved_params(), "plan.epochs_source": self.epochs_source,
                               "plan.epochs_planned": self.epochs, "plan.device": self.device}
        if self.train_rate:
            out["plan.img_per_s"] = round(self.train_rate, 1)
        if self.sample_rate:
            out["plan.sample_steps_per_s"] = round(self.sample_rate, 1)
        if self.stage_budget_s is not None:
            out["plan.stage_budget_s"] = round(self.stage_budget_s, 1)
        return out

    def announce(self) -> str:
        """One line for the console: 'time_ddpm: 31 epochs planned, about 4 min at 390 img/s (...)'."""
        what = "planned" if self.epochs_source == "budget" else "(configured)"
        speed = f" at {self.train_rate:.0f} img/s" if self.train_rate else ""
        about = f", about {_minutes(self.estimate_s)}" if self.estimate_s else ""
        levers = ", ".join(fastpath.Levers.resolve(self.fast, self.device_type).active())
        budget = f" of its {_minutes(self.stage_budget_s)} budget" if self.stage_budget_s else ""
        return (f"{self.stage}: {self.epochs} epochs {what}{about}{budget}{speed}; levers: "
                f"{levers or 'plain eager'}"
                f"{' (probe cached)' if self.cached else ''}")

    def probe_markdown(self) -> str:
        parts = []
        if self.train_probe:
            parts.append(f"training ({self.stage}), images per second\n\n{autotune.table(self.train_probe)}")
        if self.sample_probe:
            parts.append(f"sampling ({self.stage}), denoising steps of one image per second\n\n"
                         f"{autotune.table(self.sample_probe, 'img-steps/s')}")
        return "\n\n".join(parts)


def _minutes(seconds: float | None) -> str:
    if not seconds:
        return "0 s"
    return f"{seconds:.0f} s" if seconds < 90 else f"{seconds / 60:.0f} min"


def budget_floor(snapshot_epochs: list[int]) -> int:
    """The fewest epochs that keep each deliverable meaningful: every snapshot but the last at its own
    epoch, the last after it (quick: denoiser [1, 5] -> 2, time DDPM [5, 36] -> 6, class [10, 46] -> 11)."""
    snaps = sorted(set(snapshot_epochs))
    return snaps[-2] + 1 if len(snaps) >= 2 else 1


# -- candidates -----------------------------------------------------------------------------------
def _options(lever: str, value: Any, device: torch.device, bf16: bool, allow_compile: bool) -> list[Any]:
    if value != "auto":
        return [value]
    cuda = device.type == "cuda"
    if lever in ("amp", "sample_amp"):
        return ["none", "bf16"] if bf16 else ["none"]
    if lever in ("compile", "sample_compile"):
        return [False, True] if allow_compile else [False]
    if lever in ("cuda_graph", "sample_cuda_graph"):
        return [False, True] if cuda else [False]
    if lever == "sample_jit":
        return [False, True] if not cuda else [False]
    return [False, True]  # channels_last, sample_channels_last


def _base(fast: FastPath, device: torch.device) -> dict[str, Any]:
    """Every lever at its configured value, `auto` resolved to off (probed levers) or by hardware (TF32)."""
    base = {k: (OFF[k] if v == "auto" else v) for k, v in fast.model_dump().items()}
    if fast.tf32 == "auto":
        base["tf32"] = autotune.tf32_native(device)
    return base


def _warn_explicit(fast: FastPath, device: torch.device, bf16: bool) -> list[str]:
    if not fast.enabled or bf16:
        return []
    hw = "this CPU has neither AVX512-BF16 nor AMX" if device.type == "cpu" else "this device has no bf16 support"
    return [f"fast.{k}=bf16 asked for, but {hw}: bf16 autocast will likely run many times slower than fp32; "
            f"set fast.{k}=auto (or none)" for k in ("amp", "sample_amp") if getattr(fast, k) == "bf16"]


def candidates(fast: FastPath, levers: tuple[str, ...], device: torch.device | str, bf16: bool,
               allow_compile: bool, train: bool) -> list[Candidate]:
    """Plain first, then each combination of the auto levers' options (explicit ones fixed), without the
    ones that run the same levers as another on this device. Plain stays eligible unless an explicit lever
    asks for more than plain on this device."""
    device = torch.device(device)
    base = _base(fast, device)
    other = SAMPLE_LEVERS if train else TRAIN_LEVERS
    plain = Candidate("plain eager", dict(OFF))
    out: list[Candidate] = [plain]
    seen = {_signature(OFF, device, train)}
    grid = [_options(k, getattr(fast, k), device, bf16, allow_compile) for k in levers]
    explicit_on = False
    for combo in itertools.product(*grid):
        values = {**base, **dict(zip(levers, combo)), "enabled": True, **{k: OFF[k] for k in other}}
        if not train:
            values.update({k: OFF[k] for k in ("channels_last", "compile", "cuda_graph", "amp", "tf32",
                                                "cudnn_benchmark", "fused_adam")})
        sig = _signature(values, device, train)
        if sig in seen:
            continue
        seen.add(sig)
        out.append(Candidate(_name(values, device, train), values))
    fixed_on = {**base, "enabled": True, **{k: OFF[k] for k in other},
                **{k: OFF[k] for k in levers if getattr(fast, k) == "auto"}}
    explicit_on = any(getattr(fastpath.Levers.resolve(FastPath(**fixed_on), device), k) for k in
                      (("channels_last", "compile", "cuda_graph", "amp") if train else
                       ("sample_channels_last", "sample_jit", "sample_compile", "sample_cuda_graph", "sample_amp")))
    plain.eligible = not explicit_on
    return out


def _signature(values: dict[str, Any], device: torch.device, train: bool) -> tuple:
    lv = fastpath.Levers.resolve(FastPath(**values), device)
    keys = ("channels_last", "compile", "cuda_graph", "amp", "tf32", "cudnn_benchmark", "fused_adam") if train else \
        ("fold_bn", "sample_channels_last", "sample_jit", "sample_compile", "sample_cuda_graph", "sample_amp")
    return tuple(getattr(lv, k) for k in keys)


def _name(values: dict[str, Any], device: torch.device, train: bool) -> str:
    lv = fastpath.Levers.resolve(FastPath(**values), device)
    names = {"channels_last": "channels_last", "amp": "bf16", "compile": "compile", "cuda_graph": "CUDA graph",
             "tf32": "TF32", "fold_bn": "fold BN", "sample_channels_last": "channels_last", "sample_jit": "frozen jit",
             "sample_compile": "compile", "sample_cuda_graph": "CUDA graph", "sample_amp": "bf16"}
    keys = ("channels_last", "amp", "compile", "cuda_graph", "tf32") if train else \
        ("fold_bn", "sample_channels_last", "sample_jit", "sample_compile", "sample_cuda_graph", "sample_amp")
    active = [names[k] for k in keys if getattr(lv, k)]
    return " + ".join(active) if active else "fast path, no lever"


# -- runners --------------------------------------------------------------------------------------
def _sync(device: torch.device):
    return (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)


def _train_runner(stage, scfg: TrainConfig, schedule, x: torch.Tensor, y: torch.Tensor, device: torch.device):
    torch.manual_seed(PROBE_SEED)
    init = build_model(stage.model_kind, hidden=scfg.hidden).state_dict()
    loss_fn = stage.loss(scfg, schedule)
    batch = x.shape[0]

    def make(c: Candidate) -> autotune.Runner:
        levers = fastpath.Levers.resolve(FastPath(**c.levers), device)
        with fastpath.cuda_backends(levers):
            model = build_model(stage.model_kind, hidden=scfg.hidden)
            model.load_state_dict(init)
            model = fastpath.prepare_model(model.to(device).train(), levers)
            opt = fastpath.make_optimizer(model, scfg.lr, levers, device)
            step = fastpath.TrainStep(model, opt, loss_fn, torch.Generator(device).manual_seed(PROBE_SEED), levers,
                                      device, batch)
            xb = fastpath.to_layout(x, levers)
            first = step(xb, y).detach().float().reshape(1).cpu()
            step(xb, y)  # a second warm-up call: compile's and the allocator's second-call work

        def run() -> None:
            with fastpath.cuda_backends(levers):
                step(xb, y)

        return run, batch, first

    return make


def _sample_runner(stage, scfg, schedule, batch: int, device: torch.device):
    from difflab.ddpm import guided_eps_fn, time_eps_fn

    torch.manual_seed(PROBE_SEED)
    model = build_model(stage.model_kind, hidden=scfg.hidden).to(device).eval()
    gen = torch.Generator().manual_seed(PROBE_SEED)
    shape = (batch, 1, IMAGE_SIZE, IMAGE_SIZE)
    x = torch.randn(shape, generator=gen).to(device)
    t = torch.full((batch,), schedule.num_timesteps // 2, dtype=torch.long, device=device)
    labels = (torch.arange(batch) % NUM_CLASSES).to(device) if stage.conditional else None
    schedule = schedule.to(device)

    def make(c: Candidate) -> autotune.Runner:
        fast = FastPath(**c.levers)
        levers = fastpath.Levers.resolve(fast, device)
        mode = torch.inference_mode if fast.enabled else torch.no_grad  # as sampling.draw
        with mode(), fastpath.cuda_backends(levers):
            net = fastpath.sampling_model(model, levers)
            eps = guided_eps_fn(net, schedule, labels, scfg.guidance) if labels is not None else time_eps_fn(net, schedule)
            if levers.sample_channels_last:
                inner = eps
                eps = lambda a, b: inner(a.contiguous(memory_format=torch.channels_last), b)  # noqa: E731
            eps = fastpath.graph_eps_fn(eps, shape, device, levers)
            out = eps(x, t).float().cpu()
            eps(x, t)  # a second warm-up call: TorchScript optimises the frozen network on its second run

        def run() -> None:
            with mode(), fastpath.cuda_backends(levers):
                eps(x, t)

        return run, batch, out

    return make


# -- resolution -----------------------------------------------------------------------------------
def resolve_stage(cfg: PartBConfig, stage, images: torch.Tensor, labels: torch.Tensor,
                  device: torch.device | str, n_train: int | None = None) -> StagePlan:
    """The stage's levers and epochs on this machine (see the module's docstring). `images`/`labels`: the
    training set (its first batch is the probe's); nothing is probed when nothing says auto and no budget
    asks for a plan (the tiny profile), and a cached probe is reused."""
    device = torch.device(device)
    scfg = stage.config(cfg)
    fast = scfg.fast
    n_train = n_train if n_train is not None else len(labels)
    plan_epochs = bool(scfg.budget_epochs and cfg.budget_minutes)
    generative = bool(stage.generative)
    stage_budget = cfg.budget.seconds(cfg.budget_minutes, stage.key) if cfg.budget_minutes else None
    probe_budget = min(cfg.budget.probe_max_s, cfg.budget.probe_share * stage_budget) if stage_budget \
        else cfg.budget.probe_max_s
    bf16 = autotune.bf16_native(device)
    plan = StagePlan(stage=stage.name, fast=fast, epochs=scfg.epochs, epochs_source="config",
                     stage_budget_s=stage_budget if plan_epochs else None, probe_budget_s=probe_budget,
                     warnings=_warn_explicit(fast, device, bf16), n_train=n_train,
                     device_type=device.type, device=autotune.device_label(device))
    needs_probe = fast.has_auto() or plan_epochs
    if not needs_probe:
        return plan

    train_share = 0.5 if generative else 1.0
    allow_compile_train = probe_budget * train_share >= cfg.budget.compile_warmup_s
    allow_compile_sample = probe_budget * (1 - train_share) >= cfg.budget.compile_warmup_s
    probe_fast = fast if fast.enabled else FastPath(**OFF)
    train_cands = candidates(probe_fast, TRAIN_LEVERS, device, bf16, allow_compile_train, train=True)
    sample_cands = candidates(probe_fast, SAMPLE_LEVERS, device, bf16, allow_compile_sample, train=False) \
        if generative else []
    if not fast.enabled:  # plain asked for: time it only (for the plan), choose nothing else
        train_cands, sample_cands = train_cands[:1], sample_cands[:1]
    batch = min(scfg.batch_size, len(labels))
    sample_batch = min(cfg.evaluation.sample_batch_size, cfg.evaluation.num_samples, SAMPLE_PROBE_BATCH)
    schedule = stage.schedule(scfg)
    spec = {"stage": stage.key, "kind": stage.model_kind, "hidden": scfg.hidden, "batch": batch,
            "sample_batch": sample_batch, "T": getattr(scfg, "num_timesteps", None),
            "budget_s": round(probe_budget, 2), "train": [c.levers for c in train_cands],
            "sample": [c.levers for c in sample_cands], "eligible": [c.eligible for c in train_cands + sample_cands]}
    cache = autotune.ProbeCache(cache_dir())
    key = cache.key(autotune.machine_fingerprint(device), spec)
    with file_lock(cache.path(key).with_suffix(".lock")):  # runs started together probe once
        entry = cache.get(key)
        plan.cached = entry is not None
        if entry is None:
            started = time.perf_counter()
            x = images[:batch].to(device)
            y = labels[:batch].to(device)
            sched = schedule.to(device) if schedule is not None else None
            train_m = autotune.probe(train_cands, _train_runner(stage, scfg, sched, x, y, device),
                                     probe_budget * train_share, TRAIN_TOLERANCE, sync=_sync(device))
            sample_m = autotune.probe(sample_cands, _sample_runner(stage, scfg, schedule, sample_batch, device),
                                      probe_budget * (1 - train_share), SAMPLE_TOLERANCE, sync=_sync(device)) \
                if sample_cands else []
            plan.probe_seconds = time.perf_counter() - started
            entry = {"train": autotune.to_dict(train_m), "sample": autotune.to_dict(sample_m),
                     "seconds": plan.probe_seconds, "fingerprint": autotune.machine_fingerprint(device),
                     "spec": spec}
            cache.put(key, entry)
    train_m, sample_m = autotune.from_dict(entry["train"]), autotune.from_dict(entry["sample"])
    t_best = autotune.choose(train_m) if fast.enabled else train_m[0]
    s_best = (autotune.choose(sample_m) if fast.enabled else sample_m[0]) if sample_m else None
    plan.train_probe, plan.sample_probe = train_m, sample_m
    plan.train_rate = t_best.rate
    plan.sample_rate = s_best.rate if s_best else 0.0
    if fast.has_auto():
        plan.fast = _merge(fast, t_best, s_best, generative)
    _plan_epochs(cfg, stage, scfg, plan, plan_epochs)
    return plan


def _merge(fast: FastPath, t_best: Measured, s_best: Measured | None, generative: bool) -> FastPath:
    """One FastPath from the chosen training and sampling candidates (a plain choice: its levers all off;
    a stage that does not sample, the denoiser: its sampling levers off)."""
    train_keys = ("channels_last", "compile", "cuda_graph", "amp", "tf32", "cudnn_benchmark", "fused_adam")
    values = dict(OFF)
    if t_best.name != "plain eager":
        values.update({k: t_best.levers[k] for k in train_keys})
    if s_best is not None and s_best.name != "plain eager":
        values.update({k: s_best.levers[k] for k in (*SAMPLE_LEVERS, "sample_fold_bn")})
    values["enabled"] = any(values[k] not in (False, "none") for k in values if k != "enabled")
    return FastPath(**values)


def _draw_images(stage, scfg) -> int:
    if not stage.generative:
        return 0
    return scfg.samples_per_class * NUM_CLASSES if stage.conditional else scfg.num_samples


def _plan_epochs(cfg: PartBConfig, stage, scfg, plan: StagePlan, planned: bool) -> None:
    """Epochs that fit the stage's budget: what is left after the probe and the sampled figures (one draw
    per snapshot epoch and the sample run), at the probed training speed."""
    T = getattr(scfg, "num_timesteps", 0)
    draws = (len(scfg.snapshot_epochs) + 1) if stage.generative else 0
    draw_s = draws * _draw_images(stage, scfg) * T / plan.sample_rate if plan.sample_rate else 0.0
    per_epoch = plan.n_train / plan.train_rate + cfg.budget.epoch_overhead_s if plan.train_rate else 0.0
    if planned and plan.train_rate:
        train_s = plan.stage_budget_s - plan.probe_budget_s - draw_s
        floor = scfg.budget_min_epochs or budget_floor(scfg.snapshot_epochs)
        plan.epochs = autotune.plan_epochs(train_s, plan.train_rate, plan.n_train, min(floor, scfg.epochs),
                                           scfg.epochs, cfg.budget.epoch_overhead_s)
        plan.epochs_source = "budget"
    if plan.train_rate:
        plan.estimate_s = plan.epochs * per_epoch + draw_s + (plan.probe_seconds if not plan.cached else 0.0)
