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


class GraphedUNet:
    """The UNet call replayed from a CUDA graph for fixed shapes (launch overhead gone); eager for other shapes.

    Stands in for `pipe.unet` inside the project's backend only: diffusers' pipeline keeps the plain UNet.
    """

    def __init__(self, unet):
        self.unet, self.config, self.dtype, self.device = unet, unet.config, unet.dtype, unet.device
        self.graph = None
        self.failed = False

    def _capture(self, x, t, enc) -> None:
        self.static = (x.clone(), t.clone(), enc.clone())
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream), torch.no_grad():
            for _ in range(2):
                self.unet(*self.static[:2], encoder_hidden_states=self.static[2])
        torch.cuda.current_stream().wait_stream(stream)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph), torch.no_grad():
            self.out = self.unet(*self.static[:2], encoder_hidden_states=self.static[2]).sample
        self.graph = graph

    def __call__(self, x, t, encoder_hidden_states, **kw):
        from types import SimpleNamespace

        if self.failed or x.device.type != "cuda" or kw:
            return self.unet(x, t, encoder_hidden_states=encoder_hidden_states, **kw)
        if self.graph is None:
            try:
                self._capture(x, t, encoder_hidden_states)
            except Exception as exc:  # noqa: BLE001 - fall back, loudly
                print(f"warning: CUDA graph capture of the IF UNet failed ({type(exc).__name__}: {exc}); eager")
                self.failed = True
                return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)
        sx, st, se = self.static
        if (x.shape, t.shape, encoder_hidden_states.shape) != (sx.shape, st.shape, se.shape):
            return self.unet(x, t, encoder_hidden_states=encoder_hidden_states)
        sx.copy_(x)
        st.copy_(t)
        se.copy_(encoder_hidden_states)
        self.graph.replay()
        return SimpleNamespace(sample=self.out)


def run_benchmark(config_name: str = "IF-I-XL-v1.0", device: str | None = None, dtype_name: str | None = None,
                  images: int = 1, gamma: float = 7.0, repeats: int = 3, threads: int = 1,
                  graph: bool = True) -> dict[str, Any]:
    """The project's loop (plain, and with the UNet call as a CUDA graph) against IFPipeline; one report dict."""
    from difflab.edits import algorithms as A
    from difflab.edits.deepfloyd import DeepFloydBackend
    from difflab.edits.timesteps import strided_timesteps

    device = torch.device(device or ("cpu" if config_name == "tiny" or not torch.cuda.is_available() else "cuda"))
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[
        dtype_name or ("fp16" if device.type == "cuda" else "fp32")]
    if device.type == "cpu":
        torch.set_num_threads(threads)
    config = resolve_config(config_name)
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
    prompt = embeds["prompt"].to(device).expand(images, -1, -1)
    negative = embeds[""].to(device).expand(images, -1, -1)

    def project_loop():
        A.sample(backend, "prompt", num=images, gamma=gamma, seed=180, keep_every=0)

    def diffusers_pipeline():
        pipe(prompt_embeds=prompt, negative_prompt_embeds=negative, timesteps=timesteps,
             guidance_scale=gamma, output_type="pt", generator=torch.Generator(device).manual_seed(180))

    results = {"diffusers IFPipeline": measure(diffusers_pipeline, device, repeats, images),
               "project strided loop (A.3)": measure(project_loop, device, repeats, images)}
    if graph and device.type == "cuda":
        plain_unet = backend.unet
        backend.unet = GraphedUNet(plain_unet)
        try:
            results["project loop, UNet as CUDA graph"] = measure(project_loop, device, repeats, images)
        finally:
            backend.unet = plain_unet
    base = results["diffusers IFPipeline"]["s_per_image"]
    for r in results.values():
        r["speedup_vs_diffusers"] = base / r["s_per_image"]
    return {
        "config": config_name, "unet_params": params, "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.machine(),
        "dtype": str(dtype).removeprefix("torch."), "steps": len(timesteps), "unet_batch": 2 * images,
        "images_per_run": images, "gamma": gamma, "repeats": repeats, "build_s": build_s,
        "torch": torch.__version__, "results": results,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--config", default="IF-I-XL-v1.0", help="tiny, a model folder name, or a unet config.json path")
    p.add_argument("--device", default=None, help="default: cuda if available (tiny: cpu)")
    p.add_argument("--dtype", choices=["fp16", "bf16", "fp32"], default=None, help="default: fp16 on cuda, else fp32")
    p.add_argument("--images", type=int, default=1, help="images per run; the UNet batch is twice this (CFG)")
    p.add_argument("--gamma", type=float, default=7.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (tiny smoke test on shared cores)")
    p.add_argument("--no-graph", action="store_true", help="skip the CUDA-graph variant of the project's loop")
    p.add_argument("--out", default="bench_results/deepfloyd_gpu.json")
    args = p.parse_args(argv)
    report = run_benchmark(args.config, args.device, args.dtype, args.images, args.gamma, args.repeats, args.threads,
                           not args.no_graph)
    results = report["results"]
    print(f"{args.config}: {report['unet_params'] / 1e6:,.1f}M params, {report['dtype']} on {report['device_name']}, "
          f"{report['steps']} steps, UNet batch {report['unet_batch']}")
    print(f"{'method':34} {'s/image (best)':>15} {'s/image (median)':>17} {'peak GiB':>9} {'vs diffusers':>13}")
    for name, r in results.items():
        print(f"{name:34} {r['s_per_image']:15.3f} {r['s_per_image_median']:17.3f} {r['peak_gib']:9.2f} "
              f"{r['speedup_vs_diffusers']:12.2f}x")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    main()
