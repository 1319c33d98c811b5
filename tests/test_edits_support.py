"""Shared builders for the edits tests (imported by the other test_edits_* files), and tests of the helpers.

The tiny IF pipelines are built once per session in a temp folder and loaded
through the same loader that real hub ids go through.
"""

from __future__ import annotations

import functools
import tempfile
from pathlib import Path

import pytest
import torch

from difflab.ddpm import DDPMSchedule
from difflab.edits.backend import NoiseEstimate
from difflab.edits.guidance import VIEWS

EMB_DIM = 32
PROMPTS = ["", "a high quality photo", "an oil painting of a snowy mountain village", "a man wearing a hat",
           "a rocket ship"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run faster on one thread, and the test machines' cores are shared."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class OracleBackend:
    """The closed-form optimal noise estimate for a one-image data set per condition.

    eps*(x_t, t) = (x_t - sqrt(ab_t) x0_c) / sqrt(1 - ab_t); condition i is one-hot row i of `targets`,
    the zero condition selects the `uncond` target. `variance` (v in [-1, 1]) is returned if given.
    """

    name = "oracle"
    value_range = (-1.0, 1.0)
    default_condition = "0"

    def __init__(self, targets: torch.Tensor, uncond: int = 0, variance: float | None = None, T: int = 1000):
        self.targets = targets  # (K, C, H, W)
        self.uncond_index = uncond
        self.variance = variance
        self.alphas_cumprod = DDPMSchedule(T, 1e-4, 0.02).alpha_bars
        self.image_shape = tuple(targets.shape[1:])
        self.device = torch.device("cpu")
        self.calls = 0

    def condition(self, name: str) -> torch.Tensor:
        return torch.nn.functional.one_hot(torch.tensor([int(name)]), len(self.targets)).float()

    def uncond(self) -> torch.Tensor:
        return torch.zeros(1, len(self.targets))

    def predict(self, x_t: torch.Tensor, t: int, cond: torch.Tensor) -> NoiseEstimate:
        self.calls += 1
        idx = torch.where(cond.sum(1) > 0, cond.argmax(1), torch.full_like(cond.argmax(1), self.uncond_index))
        x0 = self.targets[idx]
        ab = self.alphas_cumprod[t]
        eps = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
        var = None if self.variance is None else torch.full_like(x_t, self.variance)
        return NoiseEstimate(eps, var)


def tiny_unet_kwargs(**over) -> dict:
    kw = dict(sample_size=32, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(8, 16),
              down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
              up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
              mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=16, encoder_hid_dim=EMB_DIM,
              encoder_hid_dim_type="text_proj", attention_head_dim=8, norm_num_groups=4,
              resnet_time_scale_shift="scale_shift", act_fn="gelu", addition_embed_type="text",
              addition_embed_type_num_heads=2)
    kw.update(over)
    return kw


def _if_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                         thresholding=True, sample_max_value=1.5, clip_sample=True)


@functools.lru_cache(maxsize=None)
def tiny_if_folders() -> tuple[Path, Path, Path]:
    """(stage I folder, stage II folder, embeddings .pth): random weights, saved with save_pretrained."""
    from diffusers import DDPMScheduler, IFPipeline, IFSuperResolutionPipeline, UNet2DConditionModel

    root = Path(tempfile.mkdtemp(prefix="difflab_tiny_if_"))
    torch.manual_seed(0)
    none = dict(tokenizer=None, text_encoder=None, safety_checker=None, feature_extractor=None, watermarker=None,
                requires_safety_checker=False)
    IFPipeline(unet=UNet2DConditionModel(**tiny_unet_kwargs()), scheduler=_if_scheduler(), **none) \
        .save_pretrained(root / "stage1")
    unet2 = UNet2DConditionModel(**tiny_unet_kwargs(sample_size=64, in_channels=6, class_embed_type="timestep"))
    IFSuperResolutionPipeline(unet=unet2, scheduler=_if_scheduler(),
                              image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"), **none) \
        .save_pretrained(root / "stage2")
    gen = torch.Generator().manual_seed(1)
    torch.save({p: torch.randn(1, 77, EMB_DIM, generator=gen) for p in PROMPTS}, root / "embeds.pth")
    return root / "stage1", root / "stage2", root / "embeds.pth"


@functools.lru_cache(maxsize=None)
def tiny_if_backend():
    from difflab.edits.deepfloyd import DeepFloydBackend

    s1, s2, emb = tiny_if_folders()
    return DeepFloydBackend(stage1=s1, stage2=s2, embeddings=emb, device="cpu",
                            embedding_cache=s1.parent / "cache")


@functools.lru_cache(maxsize=None)
def tiny_mnist_checkpoint() -> Path:
    from difflab.train import save_checkpoint
    from difflab.unet import ClassConditionalUNet

    torch.manual_seed(0)
    path = Path(tempfile.mkdtemp(prefix="difflab_tiny_mnist_")) / "class.pt"
    extra = {"num_timesteps": 300, "beta1": 1e-4, "beta2": 0.02}
    return save_checkpoint(path, ClassConditionalUNet(hidden=4), "class", extra)


def test_views_invert_each_other():
    x = torch.randn(2, 3, 8, 8)
    for name, (view, inv) in VIEWS.items():
        assert torch.equal(inv(view(x)), x), name
        if name != "identity":
            assert not torch.equal(view(x), x), name


def test_oracle_noise_reconstructs_its_target():
    targets = torch.rand(2, 1, 4, 4) * 2 - 1
    b = OracleBackend(targets)
    eps = torch.randn(1, 1, 4, 4)
    ab = b.alphas_cumprod[500]
    x_t = ab.sqrt() * targets[1:] + (1 - ab).sqrt() * eps
    torch.testing.assert_close(b.predict(x_t, 500, b.condition("1")).eps, eps, atol=1e-5, rtol=0)
