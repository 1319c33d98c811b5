"""Training and sampling throughput of the plain eager path against each fast lever, as ratios in one run.

Every variant starts from the same weights; rounds are interleaved (plain, lever A, lever B, plain, ...)
so a neighbour's load on shared cores hits all of them alike. The first call of each variant is timed
apart as its warm-up (torch.compile, CUDA-graph capture), and the "stage" ratio charges that warm-up
to a whole training stage of the quick profile: plain seconds / (warm-up + fast seconds).

    python bench/speed.py                          # CPU, CI-sized (about 1-2 minutes on 2 cores)
    python bench/speed.py --compile                # also torch.compile (minutes of warm-up when cold)
    python bench/speed.py --part train --rounds 5 --out bench_results
    python bench/speed.py --device cuda --hidden 64 --batch 128 --denoiser-hidden 128 --denoiser-batch 256

The `auto` row is what the quick and course profiles run: the levers resolved on this machine by
difflab.planning (a fresh probe in a temporary workdir, not the project's cache), then timed in the same
interleaved rounds as the others. Issue 17's target: auto >= 0.95x plain for every network.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "src"), str(REPO)]

from difflab import fastpath  # noqa: E402
from difflab.config import FastPath  # noqa: E402
from difflab.ddpm import DDPMSchedule, ddpm_loss, denoiser_loss  # noqa: E402
from difflab.sampling import digit_labels, draw  # noqa: E402
from difflab.unet import build_model  # noqa: E402

PLAIN = FastPath(enabled=False)


def cpu_variants(compile_: bool = True) -> dict[str, FastPath]:
    """The CPU levers one at a time, then together."""
    v = {"plain eager": PLAIN, "channels_last": FastPath(enabled=True, channels_last=True, amp="none"),
         "channels_last + bf16 autocast": FastPath(enabled=True, channels_last=True, amp="bf16")}
    if compile_:
        v["compile"] = FastPath(enabled=True, channels_last=False, compile=True, amp="none")
        v["channels_last + compile"] = FastPath(enabled=True, channels_last=True, compile=True, amp="none")
        v["channels_last + compile + bf16"] = FastPath(enabled=True, channels_last=True, compile=True, amp="bf16")
    return v


def gpu_variants() -> dict[str, FastPath]:
    off = dict(channels_last=False, cuda_graph=False, amp="none", tf32=False, cudnn_benchmark=False,
               fused_adam=False)
    return {
        "plain eager": PLAIN,
        "tf32 + cudnn + fused Adam": FastPath(enabled=True, **{**off, "tf32": True, "cudnn_benchmark": True,
                                                              "fused_adam": True}),
        "+ bf16": FastPath(enabled=True, **{**off, "tf32": True, "cudnn_benchmark": True, "fused_adam": True,
                                            "amp": "bf16"}),
        "CUDA graph fp32": FastPath(enabled=True, **{**off, "tf32": True, "cudnn_benchmark": True,
                                                    "fused_adam": True, "cuda_graph": True}),
        "CUDA graph bf16": FastPath(enabled=True, **{**off, "tf32": True, "cudnn_benchmark": True,
                                                    "fused_adam": True, "cuda_graph": True, "amp": "bf16"}),
        "all (default fast)": FastPath(enabled=True),
    }


def auto_fast(kind: str, hidden: int, batch: int, device: torch.device, samples: int | None = None):
    """The levers `auto` resolves to here for this network and batch: (FastPath, the StagePlan with its probe)."""
    from difflab import planning
    from difflab.config import AUTO_FAST, WORKDIR_ENV, PartBConfig
    from difflab.stages import STAGES

    key = {"unconditional": "denoiser", "time": "time", "class": "class"}[kind]
    section = STAGES[key].name
    overrides: dict[str, Any] = {section: {"hidden": hidden, "batch_size": batch, "fast": AUTO_FAST},
                                 "device": str(device)}
    if samples:
        overrides["evaluation"] = {"sample_batch_size": samples, "num_samples": samples}
    cfg = PartBConfig(profile="course", **overrides)  # no budget: the levers only, probe capped at probe_max_s
    gen = torch.Generator().manual_seed(1)
    x, y = torch.rand(batch, 1, 28, 28, generator=gen), torch.randint(0, 10, (batch,), generator=gen)
    saved = os.environ.get(WORKDIR_ENV)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ[WORKDIR_ENV] = tmp
        try:
            plan = planning.resolve_stage(cfg, STAGES[key], x, y, device, n_train=4000)  # the bundled split
        finally:
            if saved is None:
                os.environ.pop(WORKDIR_ENV, None)
            else:
                os.environ[WORKDIR_ENV] = saved
    return plan.fast, plan


def auto_name(fast: FastPath, device: torch.device, sampling: bool) -> str:
    active = [k for k in fastpath.Levers.resolve(fast, device).active() if k.startswith(("sample_", "fold")) == sampling]
    return f"auto ({' + '.join(active) if active else 'plain'})"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _loss_fn(kind: str, schedule: DDPMSchedule):
    if kind == "unconditional":
        return lambda m, x, y, g: denoiser_loss(m, x, 0.5, g)
    if kind == "time":
        return lambda m, x, y, g: ddpm_loss(m, schedule, x, None, 0.1, g)
    return lambda m, x, y, g: ddpm_loss(m, schedule, x, y, 0.1, g)


def paired_ratio(variant: list[float], plain: list[float]) -> float:
    """Speed over plain's: the median of each round's ratio to the plain run of the same round (speeds, higher
    is faster). Pairing by round cancels the machine's drift between rounds (a neighbour's job, the CPU's
    clock), which a ratio of two medians keeps: on the 2-core EPYC, plain against an identical copy of
    itself read 0.94x that way over 2 rounds."""
    return statistics.median(v / p for v, p in zip(variant, plain))


def train_ratios(kind: str, hidden: int, batch: int, variants: dict[str, FastPath], device: torch.device,
                 rounds: int = 3, steps: int = 10, stage_images: int = 0) -> list[dict[str, Any]]:
    """img/s per variant (median over rounds), warm-up seconds, ratio to plain, and the stage ratio."""
    schedule = DDPMSchedule(300).to(device)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    torch.manual_seed(0)
    init = build_model(kind, hidden=hidden).state_dict()
    runners = {}
    for name, fast in variants.items():
        levers = fastpath.Levers.resolve(fast, device)
        with fastpath.cuda_backends(levers):
            model = build_model(kind, hidden=hidden)
            model.load_state_dict(init)
            model = fastpath.prepare_model(model.to(device).train(), levers)
            opt = fastpath.make_optimizer(model, 1e-3, levers, device)
            step = fastpath.TrainStep(model, opt, _loss_fn(kind, schedule), torch.Generator(device).manual_seed(0),
                                      levers, device, batch)
            xb = fastpath.to_layout(x, levers)
            t0 = time.perf_counter()
            step(xb, y)  # compile / capture / first-call costs
            step(xb, y)
            sync(device)
            runners[name] = (step, xb, levers, time.perf_counter() - t0)
    speeds: dict[str, list[float]] = {n: [] for n in variants}
    for _ in range(rounds):
        for name, (step, xb, levers, _w) in runners.items():
            with fastpath.cuda_backends(levers):
                sync(device)
                t0 = time.perf_counter()
                for _ in range(steps):
                    step(xb, y)
                sync(device)
                speeds[name].append(steps * batch / (time.perf_counter() - t0))
    base = statistics.median(speeds["plain eager"])
    base_step = batch / base
    rows = []
    for name, (_s, _x, levers, warm) in runners.items():
        ips = statistics.median(speeds[name])
        row = {"what": f"train {kind} D={hidden} b{batch}", "variant": name, "img_per_s": ips,
               "ratio": paired_ratio(speeds[name], speeds["plain eager"]), "warmup_s": max(0.0, warm - 2 * base_step),
               "levers": levers.active()}
        if stage_images:
            plain_s = stage_images / base
            row["stage_ratio"] = plain_s / (row["warmup_s"] + stage_images / ips)
        rows.append(row)
    return rows


def sample_ratios(hidden: int, n: int, timesteps: int, variants: dict[str, FastPath], device: torch.device,
                  rounds: int = 3, guidance: float = 5.0) -> list[dict[str, Any]]:
    """A full CFG sampling run (timesteps steps, n images) per variant, rounds interleaved."""
    torch.manual_seed(0)
    model = build_model("class", hidden=hidden).to(device)
    with torch.no_grad():  # non-trivial BatchNorm statistics, as after training
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    schedule = DDPMSchedule(timesteps)
    labels = digit_labels(max(1, n // 10))[:n]
    warm, secs = {}, {name: [] for name in variants}
    ref = None
    diffs = {}
    for name, fast in variants.items():
        t0 = time.perf_counter()
        out = draw(model, schedule, 0, 0, labels, guidance, fast=fast).images
        warm[name] = time.perf_counter() - t0
        if ref is None:
            ref = out
        diffs[name] = (out - ref).abs().max().item()
    for _ in range(rounds):
        for name, fast in variants.items():
            sync(device)
            t0 = time.perf_counter()
            draw(model, schedule, 0, 0, labels, guidance, fast=fast)
            sync(device)
            secs[name].append(time.perf_counter() - t0)
    return [{"what": f"sample CFG D={hidden} n={len(labels)} T={timesteps}", "variant": name,
             "img_per_s": len(labels) / statistics.median(s),
             "ratio": paired_ratio([1 / x for x in s], [1 / x for x in secs["plain eager"]]),
             "warmup_s": max(0.0, warm[name] - statistics.median(s)), "max_abs_diff": diffs[name]}
            for name, s in secs.items()]


def markdown(rows: list[dict[str, Any]]) -> str:
    out = ["| measured | variant | img/s | ratio to plain | warm-up s | stage ratio (warm-up counted) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        stage = f"{r['stage_ratio']:.2f}x" if "stage_ratio" in r else "-"
        out.append(f"| {r['what']} | {r['variant']} | {r['img_per_s']:.0f} | {r['ratio']:.2f}x | "
                   f"{r['warmup_s']:.1f} | {stage} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=["train", "sample", "all"], default="all")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--hidden", type=int, default=16, help="DDPM width (quick profile: 16)")
    p.add_argument("--batch", type=int, default=64, help="DDPM batch (quick profile: 64)")
    p.add_argument("--denoiser-hidden", type=int, default=16)
    p.add_argument("--denoiser-batch", type=int, default=128)
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds; ratios are the median of per-round ratios")
    p.add_argument("--steps", type=int, default=8, help="train steps per round")
    p.add_argument("--samples", type=int, default=30, help="images per sampling run")
    p.add_argument("--timesteps", type=int, default=300)
    p.add_argument("--nets", default="unconditional,time,class", help="which networks to train")
    p.add_argument("--compile", action="store_true",
                   help="add the torch.compile variants (25-70 s cold warm-up each on 2 cores)")
    p.add_argument("--skip", action="append", default=[],
                   help="leave out the variants whose name contains this (repeatable), e.g. --skip bf16 on a CPU "
                        "without native bf16, where each bf16 step takes 10x+ longer")
    p.add_argument("--out", default=os.environ.get("OUT", "bench_results"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = gpu_variants() if device.type == "cuda" else cpu_variants(args.compile)

    def keep(vs: dict[str, FastPath]) -> dict[str, FastPath]:
        return {k: v for k, v in vs.items() if k == "plain eager" or not any(x in k for x in args.skip)}

    variants = keep(variants)
    n_train = 4000  # the bundled digits' training split; quick-profile stages below
    rows: list[dict[str, Any]] = []

    def add(new: list[dict[str, Any]]) -> None:
        rows.extend(new)
        print(markdown(new).split("\n", 2)[2], flush=True)  # progress: the table's rows as they come

    nets = [("unconditional", args.denoiser_hidden, args.denoiser_batch, 5), ("time", args.hidden, args.batch, 12),
            ("class", args.hidden, args.batch, 46)]
    if args.part in ("train", "all"):
        for kind, hidden, batch, epochs in nets:
            if kind in args.nets.split(","):
                fast, plan = auto_fast(kind, hidden, batch, device)
                print(f"auto for {kind} D={hidden} b{batch}: {plan.announce()} (probe {plan.probe_seconds:.0f} s)\n"
                      f"{plan.probe_markdown()}", flush=True)
                runs = {**variants, auto_name(fast, device, False): fast}
                add(train_ratios(kind, hidden, batch, runs, device, args.rounds, args.steps, epochs * n_train))
    if args.part in ("sample", "all"):
        svars = dict(variants)
        if device.type == "cpu":
            svars = {"plain eager": PLAIN,
                     "inference_mode + fold BN": FastPath(enabled=True, sample_jit=False),
                     "+ channels_last": FastPath(enabled=True, sample_jit=False, sample_channels_last=True),
                     "+ bf16 autocast": FastPath(enabled=True, sample_jit=False, sample_amp="bf16"),
                     "+ jit freeze (oneDNN)": FastPath(enabled=True, sample_jit=True)}
            if args.compile:
                svars["+ compile"] = FastPath(enabled=True, sample_compile=True)
        fast, plan = auto_fast("class", args.hidden, args.batch, device, samples=args.samples)
        print(f"auto sampling for class D={args.hidden} n={args.samples}: probe {plan.probe_seconds:.0f} s\n"
              f"{plan.probe_markdown()}", flush=True)
        svars = keep(svars)
        svars[auto_name(fast, device, True)] = fast
        add(sample_ratios(args.hidden, args.samples, args.timesteps, svars, device, args.rounds))
    table = markdown(rows)
    from difflab.autotune import cpu_bf16_native, device_label

    header = (f"device {device} ({device_label(device)}; native bf16: "
              f"{cpu_bf16_native() if device.type == 'cpu' else torch.cuda.is_bf16_supported()}), "
              f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores, "
              f"load average {os.getloadavg()[0]:.1f} at the end")
    print(header)
    print(table)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "speed.md").write_text(header + "\n\n" + table + "\n")
    (out / "speed.json").write_text(json.dumps({"header": header, "rows": rows}, indent=2))
    return rows


if __name__ == "__main__":
    main()
