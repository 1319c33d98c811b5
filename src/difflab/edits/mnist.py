"""The project's class-conditioned MNIST DDPM as a Part A backend, so every edit runs offline on a CPU.

Conditions are digit names "0".."9"; "" (and "uncond") is the zero vector the model
was trained with as its unconditional input.
"""

from __future__ import annotations

from pathlib import Path

import torch

from difflab.ddpm import DDPMSchedule
from difflab.edits.backend import NoiseEstimate
from difflab.sampling import schedule_from_extra
from difflab.train import load_model
from difflab.unet import ClassConditionalUNet, one_hot

UNCONDITIONAL_NAMES = ("", "uncond")


class MnistBackend:
    name = "mnist"
    value_range = (0.0, 1.0)
    default_condition = ""

    def __init__(self, model: ClassConditionalUNet, schedule: DDPMSchedule, device: torch.device | str = "cpu"):
        if not isinstance(model, ClassConditionalUNet):
            raise ValueError(f"the MNIST backend needs a class-conditioned model, got {type(model).__name__}; "
                             "give a checkpoint of the class-conditioned DDPM")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.schedule = schedule
        self.alphas_cumprod = schedule.alpha_bars.detach().float().cpu()
        self.image_shape = (model.in_channels, 28, 28)
        self.num_classes = model.num_classes

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: torch.device | str = "cpu") -> "MnistBackend":
        """A checkpoint written by the training flow; it records the DDPM schedule it was trained with."""
        model, extra = load_model(path, device)
        if not isinstance(model, ClassConditionalUNet):
            return cls(model, None, device)  # type: ignore[arg-type]  (refused there, in one line)
        try:
            schedule = schedule_from_extra(extra)
        except KeyError as exc:
            raise ValueError(f"checkpoint {path} lacks the schedule key {exc} in its extra dict; use a checkpoint "
                             "written by the training flow") from None
        return cls(model, schedule, device)

    def condition(self, name: str) -> torch.Tensor:
        if name in UNCONDITIONAL_NAMES:
            return self.uncond()
        if not (name.isdigit() and int(name) < self.num_classes):
            raise ValueError(f"unknown MNIST condition {name!r}; use a digit '0'..'{self.num_classes - 1}' "
                             "or '' for unconditional")
        return one_hot(torch.tensor([int(name)]), self.num_classes).to(self.device)

    def uncond(self) -> torch.Tensor:
        return torch.zeros(1, self.num_classes, device=self.device)

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, t: int, cond: torch.Tensor) -> NoiseEstimate:
        tt = torch.full((x_t.shape[0],), int(t), device=self.device)
        return NoiseEstimate(self.model(x_t, self.schedule.time_input(tt), cond).float())
