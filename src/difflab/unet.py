"""The MNIST UNets of SPEC.md Part B: the op table, then three networks on one backbone.

Every network maps a 1x28x28 image to a 1x28x28 image. The time-conditioned and
class-conditioned variants inject FCBlock embeddings at the two places the spec
names: after Unflatten (2D wide) and after the first UpBlock (D wide).
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 28
NUM_CLASSES = 10


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, 28, 28) as MNIST stores them -> float (N, 1, 28, 28) in [0, 1], the networks' input."""
    return images.float().div(255.0).unsqueeze(1)


class Conv(nn.Sequential):
    """Conv2d k3 s1 p1 -> BatchNorm2d -> GELU; keeps the spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 1, 1),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class DownConv(nn.Sequential):
    """Conv2d k3 s2 p1 -> BatchNorm2d -> GELU; halves the spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, 3, 2, 1),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class UpConv(nn.Sequential):
    """ConvTranspose2d k4 s2 p1 -> BatchNorm2d -> GELU; doubles the spatial size."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(
            nn.ConvTranspose2d(in_channels, out_channels, 4, 2, 1),
            nn.BatchNorm2d(out_channels),
            nn.GELU(),
        )


class Flatten(nn.Sequential):
    """AvgPool2d(7) -> GELU: 7x7 -> 1x1."""

    def __init__(self):
        super().__init__(nn.AvgPool2d(7), nn.GELU())


class Unflatten(nn.Sequential):
    """ConvTranspose2d k7 s7 p0 -> BatchNorm2d -> GELU: 1x1 -> 7x7."""

    def __init__(self, channels: int):
        super().__init__(
            nn.ConvTranspose2d(channels, channels, 7, 7, 0),
            nn.BatchNorm2d(channels),
            nn.GELU(),
        )


class ConvBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(Conv(in_channels, out_channels), Conv(out_channels, out_channels))


class DownBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(DownConv(in_channels, out_channels), ConvBlock(out_channels, out_channels))


class UpBlock(nn.Sequential):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(UpConv(in_channels, out_channels), ConvBlock(out_channels, out_channels))


class FCBlock(nn.Sequential):
    """Linear(F_in, F_out) -> GELU -> Linear(F_out, F_out); embeds t or c."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(
            nn.Linear(in_features, out_features),
            nn.GELU(),
            nn.Linear(out_features, out_features),
        )


class _UNetBackbone(nn.Module):
    """The spec's UNet; subclasses modulate the two injection points."""

    def __init__(self, in_channels: int = 1, hidden: int = 128):
        super().__init__()
        d = hidden
        self.hidden = hidden
        self.in_channels = in_channels
        self.conv_in = ConvBlock(in_channels, d)  # @28
        self.down1 = DownBlock(d, d)  # @14
        self.down2 = DownBlock(d, 2 * d)  # @7
        self.flatten = Flatten()  # @1
        self.unflatten = Unflatten(2 * d)  # @7
        self.up1 = UpBlock(4 * d, d)  # @14
        self.up2 = UpBlock(2 * d, d)  # @28
        self.conv_mid = ConvBlock(2 * d, d)
        self.conv_out = nn.Conv2d(d, in_channels, 3, 1, 1)

    def _forward(self, x: torch.Tensor, modulate) -> torch.Tensor:
        if x.shape[-2:] != (IMAGE_SIZE, IMAGE_SIZE):
            raise ValueError(
                f"UNet expects {IMAGE_SIZE}x{IMAGE_SIZE} images, got {tuple(x.shape[-2:])}; "
                "resize the input to MNIST size"
            )
        s0 = self.conv_in(x)
        s1 = self.down1(s0)
        s2 = self.down2(s1)
        h = self.unflatten(self.flatten(s2))
        h = modulate(0, h)
        h = self.up1(torch.cat([s2, h], dim=1))
        h = modulate(1, h)
        h = self.up2(torch.cat([s1, h], dim=1))
        h = self.conv_mid(torch.cat([s0, h], dim=1))
        return self.conv_out(h)

    def init_kwargs(self) -> dict:
        """Constructor arguments, stored in checkpoints so a model can be rebuilt."""
        return {"in_channels": self.in_channels, "hidden": self.hidden}


class UnconditionalUNet(_UNetBackbone):
    """Single-step denoiser D(z) -> x."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x, lambda _i, h: h)


class TimeConditionalUNet(_UNetBackbone):
    """eps_theta(x_t, t) with t given normalised as t/T, shape (B,)."""

    def __init__(self, in_channels: int = 1, hidden: int = 64):
        super().__init__(in_channels, hidden)
        self.t_embed = nn.ModuleList([FCBlock(1, 2 * hidden), FCBlock(1, hidden)])

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype)
        return self._forward(x, lambda i, h: h + self.t_embed[i](t)[:, :, None, None])


class ClassConditionalUNet(_UNetBackbone):
    """eps_theta(x_t, t, c): c is a one-hot (B, 10) vector; all zeros means unconditional."""

    def __init__(self, in_channels: int = 1, hidden: int = 64, num_classes: int = NUM_CLASSES):
        super().__init__(in_channels, hidden)
        self.num_classes = num_classes
        self.t_embed = nn.ModuleList([FCBlock(1, 2 * hidden), FCBlock(1, hidden)])
        self.c_embed = nn.ModuleList([FCBlock(num_classes, 2 * hidden), FCBlock(num_classes, hidden)])

    def forward(self, x: torch.Tensor, t: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        t = t.reshape(-1, 1).to(x.dtype)
        c = c.to(x.dtype)

        def modulate(i: int, h: torch.Tensor) -> torch.Tensor:
            return self.c_embed[i](c)[:, :, None, None] * h + self.t_embed[i](t)[:, :, None, None]

        return self._forward(x, modulate)

    def init_kwargs(self) -> dict:
        return {**super().init_kwargs(), "num_classes": self.num_classes}


MODEL_CLASSES: dict[str, type[_UNetBackbone]] = {
    "unconditional": UnconditionalUNet,
    "time": TimeConditionalUNet,
    "class": ClassConditionalUNet,
}


def build_model(kind: str, **kwargs) -> _UNetBackbone:
    if kind not in MODEL_CLASSES:
        raise ValueError(f"unknown model kind {kind!r}; choose one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[kind](**kwargs)


def one_hot(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Float one-hot rows. A comparison, not F.one_hot: its range check syncs with the host, which a
    CUDA-graph capture forbids; the values are the same."""
    return (labels.long()[:, None] == torch.arange(num_classes, device=labels.device)).float()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
