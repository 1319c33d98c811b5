"""DeepFloyd IF (stage I 64x64, stage II upsampler to 256x256) through diffusers, as a Part A backend.

The weights are gated on the hub. Loading never waits on a network that is not
there: a local folder loads directly; a hub id is tried from the local cache,
then, unless HF_HUB_OFFLINE is set, probed with a short timeout; anything else
raises BackendUnavailable with the way to get the weights. No fallback backend
is chosen silently.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Sequence

import torch

from difflab.files import workdir
from difflab.spec import IF_STAGE1 as STAGE1
from difflab.spec import IF_STAGE2 as STAGE2
from difflab.spec import NEUTRAL_PROMPT, PART_A_SEED, UNCONDITIONAL_PROMPT
from difflab.edits.backend import BackendUnavailable, NoiseEstimate

NO_EXTRAS = dict(text_encoder=None, tokenizer=None, safety_checker=None, watermarker=None,
                 feature_extractor=None, requires_safety_checker=False)


def advice(source: str, reason: str) -> str:
    return (f"DeepFloyd IF weights {source!r} are not available ({reason}); accept the licence at "
            f"https://huggingface.co/{source} and run `hf auth login` (or `huggingface-cli login`) or set HF_TOKEN, "
            "or pass a local folder saved with save_pretrained")


def hub_offline() -> bool:
    from huggingface_hub import constants

    flag = os.environ.get("HF_HUB_OFFLINE", "").strip().lower()
    return bool(constants.HF_HUB_OFFLINE) or flag in {"1", "true", "yes", "on"}


def probe_hub(source: str, token: str | None, timeout: float, endpoint: str | None = None) -> None:
    """Ask the hub for model_index.json within timeout seconds; BackendUnavailable if it will not give it."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_url
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        url = hf_hub_url(source, "model_index.json", endpoint=endpoint)
        get_hf_file_metadata(url, token=token, timeout=timeout, endpoint=endpoint)
    except GatedRepoError:
        raise BackendUnavailable(advice(source, "licence not accepted for this token")) from None
    except RepositoryNotFoundError:
        raise BackendUnavailable(advice(source, "repository not found or no access")) from None
    except Exception as e:  # network down, DNS, timeout: all mean "not here"
        raise BackendUnavailable(advice(source, f"hub unreachable: {type(e).__name__}")) from None


def from_pretrained(cls: Any, source: str | Path, token: str | None = None, probe_timeout: float = 5.0,
                    **kwargs) -> Any:
    """cls.from_pretrained for a local folder or a hub id, failing fast when the weights are not here."""
    path = Path(source).expanduser()
    if path.is_dir():
        try:
            return cls.from_pretrained(str(path), **kwargs)
        except (OSError, ValueError, EnvironmentError) as e:
            raise BackendUnavailable(f"cannot load {str(path)!r} ({type(e).__name__}: {str(e).splitlines()[0]}); "
                                     "point to a folder written by save_pretrained") from None
    source = str(source)
    try:
        return cls.from_pretrained(source, local_files_only=True, token=token, **kwargs)
    except Exception:
        pass
    if hub_offline():
        raise BackendUnavailable(advice(source, "not in the local cache and HF_HUB_OFFLINE is set"))
    probe_hub(source, token, probe_timeout)
    return cls.from_pretrained(source, token=token, **kwargs)


def load_if_pipeline(source: str | Path, stage: int = 1, device: torch.device | str = "auto",
                     fp16: bool | None = None, cpu_offload: bool = False, token: str | None = None,
                     probe_timeout: float = 5.0) -> Any:
    """IFPipeline (stage 1) or IFSuperResolutionPipeline (stage 2) without text encoder or safety extras.

    fp16 (default: on a GPU) loads the fp16 variant where the source has one.
    """
    from diffusers import IFPipeline, IFSuperResolutionPipeline

    cls = {1: IFPipeline, 2: IFSuperResolutionPipeline}[stage]
    device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                          "cpu" if device == "auto" else device)
    fp16 = device.type == "cuda" if fp16 is None else fp16
    token = token or os.environ.get("HF_TOKEN") or None
    kwargs: dict[str, Any] = dict(NO_EXTRAS)
    if fp16:
        kwargs.update(torch_dtype=torch.float16)
        local = Path(source).expanduser()
        if not local.is_dir() or any(local.glob("unet/*.fp16.*")):  # the hub repos all carry the variant
            kwargs.update(variant="fp16")
    pipe = from_pretrained(cls, source, token, probe_timeout, **kwargs)
    if cpu_offload:
        try:
            import accelerate  # noqa: F401
        except ImportError:
            raise ValueError("cpu_offload needs the accelerate package; install it or set cpu_offload=False") from None
        pipe.enable_model_cpu_offload()
    else:
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def load_embeddings(path: str | Path) -> dict[str, torch.Tensor]:
    """The course's prompt -> [1, 77, 4096] dict ("" unconditional, "a high quality photo" neutral)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"prompt embeddings {str(path)!r} not found; give the .pth file of precomputed embeddings")
    data = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(data, dict) or not all(isinstance(v, torch.Tensor) for v in data.values()):
        raise ValueError(f"{str(path)!r} is not a dict of prompt -> tensor; give the course's embedding .pth")
    return {k: (v if v.dim() == 3 else v[None]) for k, v in data.items()}


class DeepFloydBackend:
    """Stage I for the algorithms, stage II (loaded on first use) to upsample results to 256x256."""

    name = "deepfloyd"
    value_range = (-1.0, 1.0)
    default_condition = NEUTRAL_PROMPT

    def __init__(self, stage1: str | Path = STAGE1, stage2: str | Path | None = STAGE2,
                 embeddings: str | Path | dict[str, torch.Tensor] | None = None, encode_prompts: bool = False,
                 device: torch.device | str = "auto", fp16: bool | None = None, cpu_offload: bool = False,
                 token: str | None = None, embedding_cache: str | Path | None = None,
                 probe_timeout: float = 5.0, pipeline: Any = None):
        """pipeline: an already built stage I IFPipeline (benchmarks, callers that hold one); skips loading stage1."""
        self._load = dict(device=device, fp16=fp16, cpu_offload=cpu_offload, token=token, probe_timeout=probe_timeout)
        self.stage1_source, self.stage2_source = str(stage1), (None if stage2 is None else str(stage2))
        self.pipe = pipeline if pipeline is not None else load_if_pipeline(stage1, 1, **self._load)
        self._stage2 = None
        self.unet = self.pipe.unet
        self.device = torch.device(self.pipe._execution_device)
        self.dtype = self.unet.dtype
        self.alphas_cumprod = self.pipe.scheduler.alphas_cumprod.detach().float().cpu()
        size = self.unet.config.sample_size
        self.image_shape = (self.unet.config.in_channels, size, size)
        self.learned_variance = (self.unet.config.out_channels == 2 * self.unet.config.in_channels
                                 and self.pipe.scheduler.config.variance_type == "learned_range")
        if isinstance(embeddings, (str, Path)):
            embeddings = load_embeddings(embeddings)
        self.embeddings: dict[str, torch.Tensor] = dict(embeddings or {})
        self.encode_prompts = encode_prompts
        self.embedding_cache = Path(embedding_cache) if embedding_cache else workdir() / "prompt_embeds"
        self._encoder = None

    def _cache_path(self, prompt: str) -> Path:
        key = hashlib.sha1(f"{self.stage1_source}\0{prompt}".encode()).hexdigest()[:16]
        return self.embedding_cache / f"{key}.pt"

    def _encode(self, prompt: str) -> torch.Tensor:
        """T5 embedding of prompt, loaded with the same fail-fast rules as the UNet."""
        if self._encoder is None:
            from transformers import T5EncoderModel, T5Tokenizer

            kw = dict(token=self._load["token"] or os.environ.get("HF_TOKEN"), probe_timeout=self._load["probe_timeout"])
            tok = from_pretrained(T5Tokenizer, self.stage1_source, subfolder="tokenizer", **kw)
            enc = from_pretrained(T5EncoderModel, self.stage1_source, subfolder="text_encoder",
                                  torch_dtype=self.dtype, **kw)
            self._encoder = (tok, enc.to(self.device).eval())
        tok, enc = self._encoder
        ids = tok(prompt, max_length=77, padding="max_length", truncation=True, add_special_tokens=True,
                  return_tensors="pt")
        with torch.no_grad():
            return enc(ids.input_ids.to(self.device), attention_mask=ids.attention_mask.to(self.device))[0].cpu()

    def condition(self, name: str) -> torch.Tensor:
        if name not in self.embeddings:
            cached = self._cache_path(name)
            if cached.is_file():
                self.embeddings[name] = torch.load(cached, map_location="cpu")
            elif self.encode_prompts:
                emb = self._encode(name)
                cached.parent.mkdir(parents=True, exist_ok=True)
                torch.save(emb, cached)
                self.embeddings[name] = emb
            else:
                raise ValueError(f"unknown prompt {name!r}: not in the embedding dict; add it to the .pth file "
                                 "or set encode_prompts=True to encode it with T5")
        return self.embeddings[name].to(self.device, self.dtype)

    def uncond(self) -> torch.Tensor:
        return self.condition(UNCONDITIONAL_PROMPT)

    @torch.no_grad()
    def predict(self, x_t: torch.Tensor, t: int, cond: torch.Tensor) -> NoiseEstimate:
        """The first C output channels are eps; the next C, if learned, the variance value v in [-1, 1]."""
        c = self.image_shape[0]
        tt = torch.full((x_t.shape[0],), int(t), device=self.device)
        out = self.unet(x_t.to(self.device, self.dtype), tt, encoder_hidden_states=cond.to(self.dtype)).sample.float()
        return NoiseEstimate(out[:, :c], out[:, c:2 * c] if self.learned_variance else None)

    def stage2(self) -> Any:
        if self.stage2_source is None:
            raise ValueError("no stage II model configured; pass stage2= a hub id or local folder to upsample")
        if self._stage2 is None:
            self._stage2 = load_if_pipeline(self.stage2_source, 2, **self._load)
        return self._stage2

    @torch.no_grad()
    def upsample(self, images: torch.Tensor, conds: Sequence[str | torch.Tensor], num_inference_steps: int = 50,
                 guidance_scale: float = 4.0, noise_level: int = 250, seed: int = PART_A_SEED) -> torch.Tensor:
        """Stage II: each 64x64 image in [-1, 1] with its prompt -> 256x256 in [-1, 1] (CPU)."""
        if len(conds) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(conds)} prompts; give one prompt per image")
        pipe = self.stage2()
        gen = torch.Generator().manual_seed(seed)
        outs = []
        for img, c in zip(images, conds):
            emb = self.condition(c) if isinstance(c, str) else c
            out = pipe(image=img[None].to(self.device, self.dtype), prompt_embeds=emb.to(self.device, self.dtype),
                       negative_prompt_embeds=self.uncond(), num_inference_steps=num_inference_steps,
                       guidance_scale=guidance_scale, noise_level=noise_level, generator=gen, output_type="pt")
            outs.append(out.images.float().cpu())
        return torch.cat(outs)
