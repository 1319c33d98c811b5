"""Part A: sampling and editing with a pretrained pixel diffusion model, on any backend.

`load_backend("mnist", checkpoint=...)` (the default, offline on a CPU) or
`load_backend("deepfloyd", stage1=..., embeddings=...)`; then the functions in
`algorithms` take the backend and return tensors in its value range.
"""

from __future__ import annotations

from typing import Any

from difflab.edits.algorithms import (DenoiseResult, Restoration, anagram, best_blur, denoise_noisy_image, forward_process,
                                      hybrid, image_to_image, inpaint, iterative_denoise, one_step_denoise, sample,
                                      sample_at_steps, sdedit, compare_at, first_restoring)
from difflab.edits.backend import Backend, BackendUnavailable, NoiseEstimate
from difflab.edits.images import load_image, load_mask, rect_mask

BACKENDS = ("mnist", "deepfloyd")


def load_backend(kind: str = "mnist", **kwargs: Any) -> Backend:
    """mnist: checkpoint=path[, device]; deepfloyd: DeepFloydBackend's keyword arguments."""
    if kind == "mnist":
        from difflab.edits.mnist import MnistBackend

        if "checkpoint" not in kwargs:
            raise ValueError("the mnist backend needs checkpoint=<path of a class-conditioned DDPM checkpoint>")
        return MnistBackend.from_checkpoint(kwargs.pop("checkpoint"), **kwargs)
    if kind == "deepfloyd":
        from difflab.edits.deepfloyd import DeepFloydBackend

        return DeepFloydBackend(**kwargs)
    raise ValueError(f"unknown backend {kind!r}; choose one of {list(BACKENDS)}")


__all__ = ["Backend", "BackendUnavailable", "DenoiseResult", "NoiseEstimate", "anagram", "best_blur",
           "denoise_noisy_image", "forward_process", "hybrid", "image_to_image", "inpaint", "iterative_denoise",
           "load_backend", "load_image", "load_mask", "one_step_denoise", "rect_mask", "sample", "sample_at_steps",
           "sdedit", "Restoration", "compare_at", "first_restoring"]
