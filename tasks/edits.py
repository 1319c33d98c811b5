"""Prefect tasks for Part A: resolve the backend's inputs, then one task (one nested MLflow run) per section.

Tasks pass a PartAInputs of paths; the backend itself is loaded once per process
(DeepFloyd's stage I is gigabytes) and shared by the section tasks.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

import torch
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from difflab import edits, names, tracking, viz
from difflab.config import PartAConfig, workdir
from difflab.edits.guidance import VIEWS
from difflab.edits.timesteps import REFERENCE_T, cap_steps, scale_timestep, strided_timesteps
from difflab.train import pick_device
from tasks.retry import retry_if_transient


def inputs_dir() -> Path:
    return workdir() / "part_a"


class PartAInputs(BaseModel):
    backend: str
    model: str
    """A checkpoint path (MNIST) or the stage I hub id / folder (DeepFloyd)."""
    model_run_id: str | None = None
    test_image: str
    """A .pt file holding the (1, C, H, W) test image in the backend's value range."""


@task(name="find-mnist-model", cache_policy=NO_CACHE)
def find_mnist_model(cfg: PartAConfig) -> tuple[str, str | None] | None:
    """The class-conditioned checkpoint Part A edits with, as (path, MLflow run id); None when there is none."""
    m = cfg.mnist
    tracking.configure(cfg.tracking)
    if m.checkpoint:
        if not Path(m.checkpoint).exists():
            raise FileNotFoundError(f"checkpoint {m.checkpoint} not found; give the path of a class_ddpm run's "
                                    "checkpoints/final.pt, or drop mnist.checkpoint to use the registered model")
        return m.checkpoint, None
    run_id = m.model_run_id
    if run_id is None:
        if m.model_alias:
            version = tracking.model_version_by_alias(m.registered_model, m.model_alias)
        else:
            version = tracking.latest_model_version(m.registered_model)
        run_id = version.run_id if version is not None else None
    if run_id is None:
        return None
    path = tracking.download(run_id, names.FINAL_CHECKPOINT, inputs_dir() / "models" / run_id)
    return str(path), run_id


NO_MODEL_HELP = ("make one with `difflab part-b --profile quick` (a run that passes tracking.gate becomes the "
                 "champion; tiny and sweep runs never do) or `difflab runs promote`, or pass "
                 "--set mnist.train_if_missing=true or --set mnist.checkpoint=PATH")


@task(name="prepare-part-a", retries=1, retry_delay_seconds=5,
      retry_condition_fn=retry_if_transient, cache_policy=NO_CACHE)
def prepare_part_a(cfg: PartAConfig, mnist_model: tuple[str, str | None] | None = None) -> PartAInputs:
    """Find the test image and check that the backend loads (fail fast, before any section)."""
    tracking.configure(cfg.tracking)
    pick_device(cfg.device, cfg.cpu_threads)
    run_id = None
    if cfg.backend == "mnist":
        if mnist_model is None:
            m = cfg.mnist
            which = f"models:/{m.registered_model}@{m.model_alias}" if m.model_alias else \
                f"registered model {m.registered_model!r}"
            raise FileNotFoundError(f"no class-conditioned MNIST model at {which}; {NO_MODEL_HELP}")
        model, run_id = mnist_model
    else:
        model = cfg.deepfloyd.stage1
    backend = load_backend(cfg.backend, model, cfg.device, _deepfloyd_json(cfg))
    _, capped = fit_to_backend(cfg, len(backend.alphas_cumprod))
    if capped:
        get_run_logger().info("the model has T=%d steps: %s (asked -> ran)", len(backend.alphas_cumprod),
                              "; ".join(f"{k} {a} -> {r}" for k, (a, r) in capped.items()))
    if cfg.backend == "mnist":
        from difflab.data import load_mnist, to_float

        data = load_mnist(cfg.mnist.data)
        if not 0 <= cfg.mnist.test_index < len(data.test_labels):
            raise ValueError(f"mnist.test_index {cfg.mnist.test_index} is out of range; "
                             f"choose 0..{len(data.test_labels) - 1}")
        image = to_float(data.test_images[cfg.mnist.test_index:cfg.mnist.test_index + 1])
    else:
        if not cfg.deepfloyd.test_image:
            raise FileNotFoundError("DeepFloyd needs a test image; pass --set deepfloyd.test_image=PATH "
                                    "(the course uses a 64x64 photo of the Campanile)")
        image = edits.load_image(cfg.deepfloyd.test_image, backend.image_shape, backend.value_range)
    inputs_dir().mkdir(parents=True, exist_ok=True)
    path = inputs_dir() / f"test_image_{cfg.backend}.pt"
    torch.save(image, path)
    return PartAInputs(backend=cfg.backend, model=model, model_run_id=run_id, test_image=str(path))



def _deepfloyd_json(cfg: PartAConfig) -> str:
    return json.dumps(cfg.deepfloyd.model_dump(exclude={"test_image"}), sort_keys=True)


@functools.lru_cache(maxsize=2)
def load_backend(kind: str, model: str, device: str, deepfloyd_json: str) -> edits.Backend:
    dev = pick_device(device)
    if kind == "mnist":
        return edits.load_backend("mnist", checkpoint=model, device=dev)
    d = json.loads(deepfloyd_json)
    return edits.load_backend("deepfloyd", stage1=model, stage2=d["stage2"], embeddings=d["embeddings"],
                              encode_prompts=d["encode_prompts"], cpu_offload=d["cpu_offload"], fp16=d["fp16"],
                              device=dev)


def _stage2(cfg: PartAConfig, b, images: torch.Tensor, conds: list, name: str) -> None:
    """DeepFloyd: also log the stage I result upsampled to 256x256 by stage II (the neutral prompt for None)."""
    if not (hasattr(b, "upsample") and cfg.deepfloyd.stage2):
        return
    prompts = [c if c else b.default_condition for c in conds]
    big = b.upsample(images, prompts, seed=cfg.seed)
    tracking.log_image(viz.grid(big, nrow=min(len(big), 6), value_range=b.value_range), names.stage2(name))


def _grid_rows(backend, rows, row_labels, col_labels, title, frame: bool = False):
    return viz.labeled_grid(rows, row_labels, col_labels, value_range=backend.value_range, title=title, frame=frame)


def _section_sample_steps(cfg, b, image):
    out = edits.sample_at_steps(b, cfg.prompts, cfg.num_inference_steps, cfg.guidance, cfg.seed)
    tracking.log_image(_grid_rows(b, [out[n] for n in cfg.num_inference_steps],
                                  [f"{n} steps" for n in cfg.num_inference_steps], cfg.prompts,
                                  f"samples, guidance {cfg.guidance}"), names.SAMPLE_STEPS)
    for n in cfg.num_inference_steps:
        _stage2(cfg, b, out[n], cfg.prompts, f"{names.SAMPLE_STEPS}_{n}")
    return {"num_inference_steps": cfg.num_inference_steps, "prompts": cfg.prompts}


def _section_denoise(cfg, b, image):
    T = len(b.alphas_cumprod)
    ts = [scale_timestep(t, T) for t in cfg.forward_timesteps]
    noisy = edits.forward_process(b, image, ts, cfg.seed)
    stacked = torch.cat(list(noisy.values()))
    blurred, sigmas = edits.best_blur(stacked, image.expand_as(stacked))
    one = edits.one_step_denoise(b, noisy)
    labels = [f"t={t}" for t in noisy]
    tracking.log_image(_grid_rows(b, [stacked, blurred, torch.cat(list(one.values()))],
                                  ["forward x_t", "best Gaussian blur", "one-step"], labels,
                                  "forward process, classical and one-step denoising"), names.FORWARD_BLUR_ONE_STEP)
    at = edits.compare_at(b, image, cfg.i_start, cfg.seed, cfg.show_every, cfg.stride)
    res, t_start, one_start = at.iterative, at.t_start, at.one_step
    schedule = strided_timesteps(T, reference_stride=cfg.stride)
    blur_start, blur_sigma = edits.best_blur(res.start, image)
    tracking.log_image(_grid_rows(b, [torch.cat(res.frames)], ["iterative"],
                                  [f"t={t}" if t >= 0 else "clean" for t in res.frame_steps],
                                  f"iterative denoising from i_start={cfg.i_start} (every {cfg.show_every}th step)"),
                       names.ITERATIVE_STEPS)
    tracking.log_image(_grid_rows(b, [torch.cat([image, res.start, res.image, one_start, blur_start])], None,
                                  ["original", f"noisy t={t_start}", "iterative", "one-step",
                                   f"blur sigma={blur_sigma[0]}"], "denoising compared"), names.DENOISE_COMPARED)
    mse = lambda x: float(((x - image) ** 2).mean())  # noqa: E731
    tracking.log_metrics({names.MSE_ITERATIVE: at.mse_iterative, names.MSE_ONE_STEP: at.mse_one_step,
                          names.MSE_BLUR: mse(blur_start)})
    out = {"forward_timesteps": list(noisy), "blur_sigmas": sigmas, "i_start": cfg.i_start, "t_start": t_start,
           "strided_timesteps": schedule, "stride": cfg.stride, "show_every": cfg.show_every}
    if at.mse_iterative > at.mse_one_step:  # from this much noise the model generates a digit, not this one
        out.update(_restoring(cfg, b, image))
    return out


def _restoring(cfg, b, image) -> dict:
    """1.4 again from the noisiest later i_start where the iterative result is no further from the original than
    the one-step estimate: where the loop still restores the image instead of generating another one."""
    r = edits.first_restoring(b, image, cfg.i_start, cfg.seed, cfg.show_every, cfg.stride)
    if r is None:
        return {"restore_i_start": None}
    tracking.log_image(_grid_rows(b, [torch.cat([image, r.iterative.start, r.iterative.image, r.one_step])], None,
                                  ["original", f"noisy t={r.t_start}", "iterative", "one-step"],
                                  f"from i_start={r.i_start}: the iterative loop restores"), names.DENOISE_RESTORING)
    tracking.log_metrics({names.RESTORE_MSE_ITERATIVE: r.mse_iterative, names.RESTORE_MSE_ONE_STEP: r.mse_one_step})
    return {"restore_i_start": r.i_start, "restore_t_start": r.t_start}


def _section_sample(cfg, b, image):
    res = edits.sample(b, None, cfg.num_samples, gamma=None, seed=cfg.seed, stride=cfg.stride)
    tracking.log_image(viz.grid(res.image, nrow=cfg.num_samples, value_range=b.value_range, scale=4),
                       names.SAMPLES_UNGUIDED)
    _stage2(cfg, b, res.image, [None] * len(res.image), names.SAMPLES_UNGUIDED)
    return {"num_samples": cfg.num_samples, "guidance": None}


def _section_cfg(cfg, b, image):
    rows = [edits.sample(b, c, cfg.num_samples, gamma=cfg.guidance, seed=cfg.seed, stride=cfg.stride).image
            for c in cfg.cfg_conditions]
    tracking.log_image(_grid_rows(b, rows, [repr(c) for c in cfg.cfg_conditions], None,
                                  f"classifier-free guidance, gamma={cfg.guidance}"), names.SAMPLES_CFG)
    _stage2(cfg, b, torch.cat(rows), [c for c in cfg.cfg_conditions for _ in range(cfg.num_samples)], names.SAMPLES_CFG)
    return {"conditions": cfg.cfg_conditions, "guidance": cfg.guidance, "num_samples": cfg.num_samples}


def _sdedit_rows(cfg, b, images, cond):
    rows = []
    for img in images:
        out = edits.sdedit(b, img, cond, cfg.sdedit_i_starts, cfg.guidance, cfg.seed, stride=cfg.stride)
        rows.append(torch.cat([*out.values(), img]))
    return rows


def _section_sdedit(cfg, b, image):
    images = [image] + [edits.load_image(p, b.image_shape, b.value_range) for p in cfg.user_images]
    row_names = ["test image"] + [Path(p).stem for p in cfg.user_images]
    cols = [f"i_start={i}" for i in cfg.sdedit_i_starts] + ["original"]
    rows = _sdedit_rows(cfg, b, images, None)
    tracking.log_image(_grid_rows(b, rows, row_names, cols, f"SDEdit, guidance {cfg.guidance}"), names.SDEDIT)
    for name, row in zip(row_names, rows):
        _stage2(cfg, b, row[:-1], [None] * (len(row) - 1), f"{names.SDEDIT}_{Path(name).stem.replace(' ', '_')}")
    return {"i_starts": cfg.sdedit_i_starts, "user_images": cfg.user_images}


def _section_i2i(cfg, b, image):
    cols = [f"i_start={i}" for i in cfg.sdedit_i_starts] + ["original"]
    rows = [_sdedit_rows(cfg, b, [image], c)[0] for c in cfg.i2i_conditions]
    tracking.log_image(_grid_rows(b, rows, [repr(c) for c in cfg.i2i_conditions], cols,
                                  "text-conditional image-to-image"), names.IMAGE_TO_IMAGE)
    for i, (cond, row) in enumerate(zip(cfg.i2i_conditions, rows)):
        _stage2(cfg, b, row[:-1], [cond] * (len(row) - 1), f"{names.IMAGE_TO_IMAGE}_{i}")
    return {"conditions": cfg.i2i_conditions, "i_starts": cfg.sdedit_i_starts}


def _section_inpaint(cfg, b, image):
    size = tuple(b.image_shape[1:])
    if cfg.inpaint_mask:
        mask = edits.load_mask(cfg.inpaint_mask, size)
    else:
        r = cfg.inpaint_rect
        mask = edits.rect_mask(size, r.top, r.left, r.height, r.width)
    res = edits.inpaint(b, image, mask, None, cfg.guidance, cfg.seed, stride=cfg.stride)
    lo = b.value_range[0]
    shown_mask = mask.expand_as(image) * (b.value_range[1] - lo) + lo
    tracking.log_image(_grid_rows(b, [torch.cat([image, shown_mask, image * (1 - mask) + lo * mask, res.image])],
                                  None, ["original", "mask", "kept", "inpainted"], "inpainting", frame=True), names.INPAINT)
    _stage2(cfg, b, res.image, [None], names.INPAINT)
    outside = float(((res.image - image).abs() * (1 - mask)).max())
    # The share repainted beside the change outside the mask: a 0.0 change means something only if pixels were kept.
    tracking.log_metrics({names.UNMASKED_MAX_ABS_CHANGE: outside, names.REPAINTED_SHARE: float(mask.mean())})
    return {"mask": cfg.inpaint_mask or cfg.inpaint_rect.model_dump()}


def _section_anagram(cfg, b, image):
    for i, spec in enumerate(cfg.anagrams):
        res = edits.anagram(b, spec.first, spec.second, spec.view, cfg.guidance, seed=cfg.seed, stride=cfg.stride)
        viewed = VIEWS[spec.view][0](res.image)
        tracking.log_image(_grid_rows(b, [torch.cat([res.image, viewed])], None,
                                      [repr(spec.first), f"{spec.view}: {spec.second!r}"], "visual anagram"),
                           names.anagram(i))
        _stage2(cfg, b, res.image, [spec.first], names.anagram(i))
    return {"anagrams": [s.model_dump() for s in cfg.anagrams]}


def _section_hybrid(cfg, b, image):
    for i, spec in enumerate(cfg.hybrids):
        res = edits.hybrid(b, spec.low, spec.high, cfg.guidance, cfg.hybrid_kernel_size, cfg.hybrid_sigma,
                           seed=cfg.seed, stride=cfg.stride)
        h, w = res.image.shape[-2:]
        f = cfg.hybrid_small_factor
        small = torch.nn.functional.interpolate(res.image, size=(h // f, w // f), mode="area")
        tracking.log_image(viz.grid(res.image, value_range=b.value_range, scale=4), names.hybrid(i, "full"))
        tracking.log_image(viz.grid(small, value_range=b.value_range), names.hybrid(i, "small"))
        _stage2(cfg, b, res.image, [spec.low], f"{names.HYBRID_PREFIX}{i}")
    return {"hybrids": [s.model_dump() for s in cfg.hybrids], "kernel_size": cfg.hybrid_kernel_size,
            "sigma": cfg.hybrid_sigma, "small_factor": cfg.hybrid_small_factor}


SECTIONS = {"sample_steps": _section_sample_steps, "denoise": _section_denoise, "sample": _section_sample,
            "cfg": _section_cfg, "sdedit": _section_sdedit, "i2i": _section_i2i, "inpaint": _section_inpaint,
            "anagram": _section_anagram, "hybrid": _section_hybrid}


def fit_to_backend(cfg: PartAConfig, num_timesteps: int) -> tuple[PartAConfig, dict]:
    """Step counts and i_starts capped to what a model with num_timesteps steps has (see cap_steps);
    returns the config that runs and {field: [asked, ran]} for every value that changed.

    Only values the spec's schedule (T = 1000) has are capped: one beyond even that is a mistake, and an
    error names the range."""
    reference_last = len(strided_timesteps(REFERENCE_T, reference_stride=cfg.stride)) - 1
    for name in ("i_start", "sdedit_i_starts"):
        value = getattr(cfg, name)
        if max(value if isinstance(value, list) else [value]) > reference_last:
            raise ValueError(f"{name}={value} is out of range; use 0..{reference_last} (indices into the "
                             f"{reference_last + 1} strided timesteps of stride {cfg.stride})")
    if max(cfg.num_inference_steps) > REFERENCE_T:
        raise ValueError(f"num_inference_steps={cfg.num_inference_steps} is out of range; use 1..{REFERENCE_T}")
    last_index = len(strided_timesteps(num_timesteps, reference_stride=cfg.stride)) - 1
    fitted = {"num_inference_steps": cap_steps(cfg.num_inference_steps, num_timesteps),
              "sdedit_i_starts": cap_steps(cfg.sdedit_i_starts, last_index),
              "i_start": min(cfg.i_start, last_index)}
    changed = {k: [getattr(cfg, k), v] for k, v in fitted.items() if getattr(cfg, k) != v}
    return (cfg.model_copy(update=fitted) if changed else cfg), changed


@task(name="part-a-section", task_run_name="part-a-{section}", cache_policy=NO_CACHE)
def run_section(cfg: PartAConfig, section: str, inputs: PartAInputs, parent_run_id: str) -> str:
    """One Part A section in its own nested MLflow run; returns the run id."""
    tracking.configure(cfg.tracking)
    pick_device(cfg.device, cfg.cpu_threads)
    b = load_backend(inputs.backend, inputs.model, cfg.device, _deepfloyd_json(cfg))
    image = torch.load(inputs.test_image, weights_only=True)
    cfg, capped = fit_to_backend(cfg, len(b.alphas_cumprod))
    with tracking.run(f"part_a/{section}", cfg.tracking.experiment, parent_run_id,
                      {names.STAGE_TAG: names.part_a_run(section), "backend": inputs.backend}) as run_id:
        tracking.log_params({"backend": inputs.backend, "model": inputs.model, "seed": cfg.seed,
                             "num_timesteps": len(b.alphas_cumprod)})
        if capped:
            tracking.log_tags({"steps_capped": json.dumps(capped)})
        params = SECTIONS[section](cfg, b, image)
        tracking.log_params({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in params.items()})
    return run_id
