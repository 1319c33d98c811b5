"""Which timesteps Part A visits, on a model with any number of training steps T.

The spec's numbers are for T = 1000 (DeepFloyd). On another T (the MNIST model has
300) the strided schedule keeps the same number of steps (34), so the same i_start
values mean the same relative noise levels, and single timesteps scale by T/1000.
"""

from __future__ import annotations

from typing import Sequence

from difflab.spec import FORWARD_TIMESTEPS, PART_A_STRIDE, SDEDIT_I_STARTS  # noqa: F401  (re-exported)

REFERENCE_T = 1000
REFERENCE_STRIDE = PART_A_STRIDE


def strided_timesteps(num_timesteps: int, stride: int | None = None,
                      reference_stride: int = REFERENCE_STRIDE) -> list[int]:
    """Descending steps by stride = round(reference_stride T / 1000), from the largest multiple below T to 0.

    T = 1000 gives 990, 960, ..., 0; T = 300 gives 297, 288, ..., 0 (34 steps each, reference stride 30).
    """
    stride = stride or max(1, round(reference_stride * num_timesteps / REFERENCE_T))
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    start = (num_timesteps - 1) // stride * stride
    return list(range(start, -1, -stride))


def inference_timesteps(num_timesteps: int, num_inference_steps: int) -> list[int]:
    """num_inference_steps timesteps spread evenly from T-1 down to 0."""
    if not 1 <= num_inference_steps <= num_timesteps:
        raise ValueError(f"num_inference_steps={num_inference_steps} is out of range; "
                         f"use 1..{num_timesteps} for this model")
    if num_inference_steps == 1:
        return [num_timesteps - 1]
    n = num_inference_steps - 1
    return [round((num_timesteps - 1) * (n - i) / n) for i in range(num_inference_steps)]


def cap_steps(values: Sequence[int], limit: int) -> list[int]:
    """Values above limit become limit, duplicates dropped, order kept.

    The rule by which Part A's step counts (capped at T) and i_starts (capped at the last
    strided index) fit a model with fewer steps than the spec's, e.g. the tiny profile's T = 20.
    """
    out: list[int] = []
    for v in values:
        v = min(int(v), limit)
        if v not in out:
            out.append(v)
    return out


def scale_timestep(t_reference: int, num_timesteps: int) -> int:
    """A spec timestep written for T = 1000, mapped to a model with num_timesteps steps."""
    return min(num_timesteps - 1, round(t_reference * num_timesteps / REFERENCE_T))


def check_timestep(t: int, num_timesteps: int) -> int:
    if not 0 <= int(t) < num_timesteps:
        raise ValueError(f"t={t} is out of range; use 0..{num_timesteps - 1} for this model")
    return int(t)


def check_i_start(i_start: int, timesteps: Sequence[int]) -> int:
    if not 0 <= int(i_start) < len(timesteps):
        raise ValueError(f"i_start={i_start} is out of range; use 0..{len(timesteps) - 1} "
                         f"(index into the {len(timesteps)} strided timesteps)")
    return int(i_start)
