"""The speed levers (FastPath), their all-auto setting, and how a budgeted run spends its minutes."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from difflab.config.base import FROM_PROFILE, Auto, _Strict


class FastPath(_Strict):
    """Speed levers for training and sampling. `enabled=false` is the plain eager path of the spec,
    one switch away; the levers below apply only when enabled, and only on the devices named.
    Every lever computes the same step within float tolerance (bf16 `amp` aside, which rounds).

    `auto` (the quick and course profiles' value for every lever that can be slower on some hardware):
    bf16 only where the device computes it natively (a CPU with AVX512-BF16 or AMX, a CUDA device with
    bf16), TF32 only on CUDA 8.0+, the others chosen per stage by a short probe on the stage's network and
    batch shape, plain always a candidate; the choice is logged as `fast.resolved.*` (difflab.planning)."""

    model_config = FROM_PROFILE

    enabled: bool = False
    """Master switch: false trains and samples exactly as the plain eager loop."""
    channels_last: bool | Auto = True
    """NHWC weights and activations (CPU: oneDNN's faster convolutions; GPU: tensor-core layouts)."""
    compile: bool | Auto = False
    """torch.compile the training forward/backward (full batches only); skipped under a CUDA graph.
    auto: probed only when the probe's time allows its warm-up (Budget.compile_warmup_s), else off."""
    cuda_graph: bool | Auto = True
    """CUDA only: the whole train step (forward, loss, backward, Adam) captured as one CUDA graph."""
    amp: Literal["auto", "none", "bf16"] = "bf16"
    """bf16 autocast of the training forward (weights and Adam stay fp32); rounds, so the loss curve follows
    the plain one within bf16 precision rather than float tolerance. On hardware without native bf16 it is
    10x+ slower: `auto` never picks it there, and an explicit bf16 is obeyed with a warning."""
    tf32: bool | Auto = True
    """CUDA only: TF32 matmuls and convolutions (auto: on compute capability 8.0 and later)."""
    cudnn_benchmark: bool = True
    """CUDA only: let cuDNN pick the fastest convolution algorithm for the fixed shapes."""
    fused_adam: bool = True
    """CUDA only: the fused (single-kernel) Adam; capturable, so it works inside the CUDA graph."""
    sample_channels_last: bool | Auto = False
    """Sampling in NHWC (bench/speed.py on the CPU: 0.8x for the small sampling batches, so off)."""
    sample_fold_bn: bool = True
    """Sampling: fold each BatchNorm into the convolution before it (eval statistics)."""
    sample_jit: bool | Auto = True
    """CPU only: sampling through a traced, frozen, optimize_for_inference network (oneDNN conv fusions)."""
    sample_compile: bool | Auto = False
    """Sampling: torch.compile the folded network (fixed batch shape); auto as `compile`."""
    sample_cuda_graph: bool | Auto = True
    """CUDA only: the guided noise estimate captured as a CUDA graph and replayed every step."""
    sample_amp: Literal["auto", "none", "bf16"] = "none"
    """bf16 autocast while sampling (rounds the samples; off by default; auto: as `amp`)."""

    def speed(self):
        """The same levers as the plain frozen dataclass the math modules take (difflab.fastpath.Speed)."""
        from difflab.fastpath import Speed

        return Speed(**self.model_dump())

    def has_auto(self) -> bool:
        return self.enabled and any(v == "auto" for v in self.model_dump().values())


AUTO_FAST: dict[str, Any] = {"enabled": True, **{k: "auto" for k in (
    "channels_last", "compile", "cuda_graph", "amp", "tf32", "sample_channels_last", "sample_jit",
    "sample_compile", "sample_cuda_graph", "sample_amp")}}
"""Every lever that can be slower on some hardware left to the machine (the quick and course profiles)."""


class Budget(_Strict):
    """How a run with `budget_minutes` spends them, and how much the lever probe may cost."""

    model_config = FROM_PROFILE

    shares: dict[Literal["denoiser", "time", "class", "evaluation"], float] = Field(default_factory=lambda: {
        "denoiser": 0.07, "time": 0.18, "class": 0.53, "evaluation": 0.22})
    """Shares of the budget: a stage's share covers its probe, training, snapshot figures and sample run.
    First set to the proportions of the last quick run that met the quality issue's numbers on the AVX512-BF16
    CPU (denoiser 62 s, time DDPM 144 s, class DDPM 188 s, evaluation 210 s of 604 s). On the AVX2-only EPYC
    those gave the class DDPM 11 epochs and 70 % class agreement (gate 90 %) while the time DDPM (13 epochs,
    Frechet 11.7x its floor) and the denoiser (PSNR 19.3 dB) held up, so the class DDPM, which the champion
    gate and Part A read, now gets half the budget, and the evaluation only what 100-200 samples need."""
    probe_max_s: float = Field(10.0, gt=0)
    """Seconds a stage's probe may take at most (training and sampling probes together)."""
    probe_share: float = Field(0.05, gt=0, le=1)
    """... and at most this share of the stage's budget."""
    compile_warmup_s: float = Field(60.0, gt=0)
    """torch.compile's cold warm-up (25-70 s on the 2-core CPU): `compile=auto` is probed only when the
    probe may take this long, since a probe that cannot afford the warm-up cannot judge it."""
    epoch_overhead_s: float = Field(0.3, ge=0)
    """Per-epoch cost besides the optimizer steps (checkpoints, logging), in the epoch plan."""
    judge_share: float = Field(0.1, ge=0, lt=1)
    """Share of the evaluation's budget kept for the judge and the Frechet distances, not sampling."""
    overhead_share: float = Field(0.15, ge=0, lt=1)
    """Share of the whole budget set aside before `shares` split the rest: the work no stage plan models (loading
    the data and probing, each sample run's trajectory, GIF and logging, the judge's first training, the
    denoiser's numbers, flow and task start-up). Measured on the 2-core AVX2 EPYC, two quick runs: 95 s of the
    600 (plan 20 s, sample runs 37 s, judge 20 s, denoiser numbers 6 s, the rest start-up), while the stages'
    own estimates held within 0-27 % in one run and 16-49 % short in the next; the evaluation's re-plan from
    the time left (difflab.evaluation_plan.fit_time_left) absorbs what remains, down to its minimum samples."""

    sampling_margin: float = Field(1.3, ge=1)
    """The evaluation's re-plan fits its samples into the time left divided by this: the evaluation's sampling ran
    1.05-1.47x longer than its probe predicts in four quick runs on the 2-core AVX2 EPYC (its batch of 100-220,
    doubled by the guidance, against the probe's 100), and it is the last step before the budget ends."""

    def seconds(self, budget_minutes: float, part: str) -> float:
        """Seconds of `budget_minutes` for `part` (a key of `shares`): its share of what the overhead leaves."""
        return budget_minutes * 60 * (1 - self.overhead_share) * self.shares[part]
