"""`difflab generate`: draw digits from a registered DDPM through its MLflow pyfunc model into a PNG grid;
needs no Prefect, only the MLflow registry and the model's own pyfunc."""

from __future__ import annotations

import argparse
from pathlib import Path

from difflab.cli.failures import error as fail
from difflab.cli.failures import one_line

GENERATE_MODEL = "models:/difflab-class-ddpm@champion"


def generate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="difflab generate", description="Draw digits from a registered DDPM through "
                                "its MLflow pyfunc model (what `mlflow models serve` runs) and write them as a grid: "
                                "one row per digit, n columns.")
    p.add_argument("--model", default=GENERATE_MODEL, help=f"a model URI (default {GENERATE_MODEL}; also "
                   "models:/<name>/<version>, models:/<name>/latest, models:/<model_id>, runs:/<run>/<name>)")
    p.add_argument("--digits", help="the digits to draw, one grid row each, e.g. 0123456789 (the default for a "
                   "class-conditioned model); leave out for the time-conditioned model")
    p.add_argument("-n", "--count", type=int, default=4, help="images per digit (default 4)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance (default: the trained value)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (default 0): same seed, same digits")
    p.add_argument("-o", "--output", default="digits.png", help="the PNG grid to write (default digits.png)")
    p.add_argument("--npy", action="store_true", help="also write the images beside it as <output>.npy: float32 "
                   "(rows, n, 28, 28) in [0, 1]")
    p.add_argument("--tracking-uri", help="an MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                   "sqlite:///mlflow.db)")
    return p


def generate_main(argv: list[str]) -> int:
    """`difflab generate`: no Prefect, only the MLflow registry and the model's own pyfunc."""
    args = generate_parser().parse_args(argv)
    from difflab import tracking
    from difflab.config import TrackingConfig

    cfg = TrackingConfig(tracking_uri=args.tracking_uri)
    uri = tracking.tracking_uri(cfg)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        return fail(f"no MLflow store at {uri}; run this where `difflab part-b` ran, or pass --tracking-uri "
                    "(or set MLFLOW_TRACKING_URI)")
    try:
        tracking.probe(cfg)
        tracking.configure(cfg)
        model = tracking.load_pyfunc(args.model)
    except (tracking.ModelNotFound, tracking.TrackingUnreachable) as exc:
        return fail(str(exc))
    meta = (model.metadata.metadata or {}).get(tracking.MODEL_METADATA_KEY)
    if not meta or meta.get("kind") != "generator":
        what = "the single-step denoiser (it cleans noisy digits)" if meta else "not a difflab DDPM"
        return fail(f"{args.model} is {what}; give a DDPM, e.g. --model {GENERATE_MODEL} or "
                    "models:/difflab-time-ddpm/latest")
    if args.digits is not None and not meta["conditional"]:
        return fail(f"{args.model} is the time-conditioned DDPM: it draws unconditional digits; leave out --digits "
                    f"(or give a class-conditioned model, e.g. {GENERATE_MODEL})")
    digits = (args.digits or "0123456789") if meta["conditional"] else None
    if digits is not None and (not digits.isdigit() or not digits.isascii()):
        return fail(f"--digits {digits!r}: give the digits to draw as one string of 0-9, e.g. --digits 0123456789")
    from difflab.generator import UNCONDITIONAL

    rows = [{"digit": int(d), "count": args.count, "seed": args.seed} for d in digits] if digits else \
        [{"digit": UNCONDITIONAL, "count": args.count, "seed": args.seed}]
    if args.guidance is not None:
        if not meta["conditional"]:
            return fail("--guidance: the time-conditioned model has no classifier-free guidance; leave it out")
        rows = [{**r, "guidance": args.guidance} for r in rows]
    import numpy as np
    import pandas as pd

    try:
        answer = model.predict(pd.DataFrame(rows))
    except Exception as exc:  # noqa: BLE001 - MLflow's schema check or the model's InvalidRequest: one line
        return fail(f"{args.model}: {one_line(exc).removeprefix('Failed to enforce schema of data ')}")
    images = np.stack(answer["image"].to_list()).astype(np.float32).reshape(len(rows), args.count, 28, 28)
    import torch

    from difflab import viz

    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    viz.grid(torch.from_numpy(images).reshape(-1, 1, 28, 28), nrow=args.count, scale=2).save(out)
    print(f"wrote {out} ({len(rows)} x {args.count} digits from {args.model}, seed {args.seed})")
    if args.npy:
        np.save(out.with_suffix(".npy"), images)
        print(f"wrote {out.with_suffix('.npy')} (float32 {tuple(images.shape)} in [0, 1])")
    return 0
