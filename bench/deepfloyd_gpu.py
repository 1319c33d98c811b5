"""Stage I of DeepFloyd IF at true size with random weights: the project's strided CFG loop against diffusers'
IFPipeline, same UNet, same 34 timesteps, same batch (2: conditional + unconditional), in one run.

Reports seconds per image and peak GPU memory per method as a table and a JSON file. No hub access is needed:
the UNet is built from a config.json and the prompt embeddings are random.

    python bench/deepfloyd_gpu.py                      # IF-I-XL config, fp16, on the GPU
    python bench/deepfloyd_gpu.py --config IF-I-L-v1.0 # another size from the configs folder
    python bench/deepfloyd_gpu.py --config path/to/unet/config.json
    python bench/deepfloyd_gpu.py --config tiny        # a tiny UNet on the CPU, a smoke test in seconds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIRS = [Path(os.environ["DIFFLAB_DEEPFLOYD_CONFIGS"])] if os.environ.get("DIFFLAB_DEEPFLOYD_CONFIGS") else []
CONFIG_DIRS += [REPO / "shared" / "deepfloyd_configs", REPO / "bench" / "deepfloyd_configs",
                Path("/work/shared/deepfloyd_configs")]
SCHEDULER = dict(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                 thresholding=False, clip_sample=False)
"""IF's stage I scheduler without thresholding, so both methods do the same arithmetic per step."""
TINY = dict(sample_size=32, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(16, 32),
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=32, encoder_hid_dim=64,
            encoder_hid_dim_type="text_proj", attention_head_dim=8, norm_num_groups=8,
            resnet_time_scale_shift="scale_shift", act_fn="gelu", addition_embed_type="text",
            addition_embed_type_num_heads=2)


def resolve_config(name: str) -> dict[str, Any]:
    """'tiny', a model folder name (IF-I-XL-v1.0), or a path to a unet config.json."""
    if name == "tiny":
        return dict(TINY)
    path = Path(name)
    if not path.is_file():
        candidates = [d / name / "unet" / "config.json" for d in CONFIG_DIRS]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            raise SystemExit(f"no unet config for {name!r}; looked in {[str(c) for c in candidates]}; "
                             "pass --config path/to/unet/config.json")
    return json.loads(path.read_text())


def build_pipeline(config: dict[str, Any], device: torch.device, dtype: torch.dtype):
    """Random-weight UNet built directly on the device in dtype (the XL UNet is 4.3B parameters)."""
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel

    default_dtype = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            unet = UNet2DConditionModel.from_config(config)
    finally:
        torch.set_default_dtype(default_dtype)
    pipe = IFPipeline(tokenizer=None, text_encoder=None, unet=unet.eval(), scheduler=DDPMScheduler(**SCHEDULER),
                      safety_checker=None, feature_extractor=None, watermarker=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device: torch.device, repeats: int, images: int) -> dict[str, float]:
    fn()  # warm-up: kernels, allocator, cuDNN autotune
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    best = min(times)
    return {"s_per_image": best / images, "s_per_image_median": sorted(times)[len(times) // 2] / images,
            "peak_gib": peak}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="IF-I-XL-v1.0", help="tiny, a model folder name, or a unet config.json path")
    p.add_argument("--device", default=None, help="default: cuda if available (tiny: cpu)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default: fp16 on cuda, else fp32")
    p.add_argument("--images", type=int, default=1, help="images per run; the UNet batch is twice this (CFG)")
    p.add_argument("--gamma", type=float, default=7.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (tiny smoke test on shared cores)")
    p.add_argument("--out", default="bench_results/deepfloyd_gpu.json")
    args = p.parse_args(argv)

    from difflab.edits import algorithms as A
    from difflab.edits.deepfloyd import DeepFloydBackend
    from difflab.edits.timesteps import strided_timesteps

    device = torch.device(args.device or ("cpu" if args.config == "tiny" or not torch.cuda.is_available() else "cuda"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        args.dtype or ("fp16" if device.type == "cuda" else "fp32")]
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    config = resolve_config(args.config)
    t0 = time.perf_counter()
    pipe = build_pipeline(config, device, dtype)
    build_s = time.perf_counter() - t0
    params = sum(x.numel() for x in pipe.unet.parameters())
    gen = torch.Generator().manual_seed(0)
    emb_dim = config.get("encoder_hid_dim") or config["cross_attention_dim"]
    embeds = {p: torch.randn(1, 77, emb_dim, generator=gen, dtype=torch.float32).to(dtype) for p in ("", "prompt")}
    backend = DeepFloydBackend(stage2=None, embeddings=embeds, device=device, pipeline=pipe,
                               embedding_cache=REPO / ".difflab" / "bench_embeds")
    timesteps = strided_timesteps(1000)
    prompt = embeds["prompt"].to(device).expand(args.images, -1, -1)
    negative = embeds[""].to(device).expand(args.images, -1, -1)

    def project_loop():
        A.sample(backend, "prompt", num=args.images, gamma=args.gamma, seed=180, keep_every=0)

    def diffusers_pipeline():
        pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, timesteps=timesteps,
             guidance_scale=args.gamma, output_type="pt", generator=torch.Generator(device).manual_seed(180))

    results = {"project strided loop (A.3)": measure(project_loop, device, args.repeats, args.images),
               "diffusers IFPipeline": measure(diffusers_pipeline, device, args.repeats, args.images)}
    report = {
        "config": args.config, "unet_params": params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "dtype": str(dtype).removeprefix("torch."), "steps": len(timesteps), "unet_batch": 2 * args.images,
        "images_per_run": args.images, "gamma": args.gamma, "repeats": args.repeats, "build_s": build_s,
        "torch": torch.__version__, "results": results,
    }
    print(f"{args.config}: {params / 1e6:,.1f}M params, {report['dtype']} on {report['device_name']}, "
          f"{len(timesteps)} steps, UNet batch {2 * args.images}")
    print(f"{'method':32} {'s/image (best)':>15} {'s/image (median)':>17} {'peak GiB':>9}")
    for name, r in results.items():
        print(f"{name:32} {r['s_per_image']:15.3f} {r['s_per_image_median']:17.3f} {r['peak_gib']:9.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
