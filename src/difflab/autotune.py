"""Choosing speed levers on the machine at hand, by measurement (plain Python and PyTorch; no config classes).

What the hardware decides, it decides without timing: bf16 autocast only where the device computes bf16
natively (a CPU with AVX512-BF16 or AMX, a CUDA device that supports bf16: elsewhere every op converts and
bf16 runs 10x+ slower, as PyTorch's AMP notes say), TF32 only on a CUDA device of compute capability 8.0+.
The rest (channels_last, the frozen sampler, torch.compile, CUDA graphs) is decided by `probe`: a few
steps of each candidate set on the stage's real network and batch shape, interleaved in rounds so a
neighbour's load hits them alike, with the plain path always measured first. `choose` takes the fastest
candidate whose result stays within tolerance of plain's, and only when it beats plain by `SPEEDUP_MARGIN`
(so a noisy probe never picks a slower path: the resolved path runs at least plain's speed). `ProbeCache`
keeps the results per machine (`machine_fingerprint`) under the workdir, so reruns reuse them.

The same measured rates plan a run to a time budget: `plan_epochs` and `plan_samples`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

PROBE_VERSION = 1
"""Bumped when what the probe measures changes: older cache entries are ignored."""
SPEEDUP_MARGIN = 1.05
"""A candidate must beat plain by this factor in the probe to be chosen: timing noise between rounds on a
shared CPU is a few per cent, and a candidate that is only as fast as plain is not worth its risk."""
MIN_ROUNDS = 2
MAX_ROUNDS = 5
"""Interleaved rounds: at least MIN_ROUNDS (a median needs two), at most MAX_ROUNDS when time allows."""
TARGET_ROUNDS = 3
"""The probe sizes its rounds so that this many fit its time budget after the warm-ups."""

Runner = tuple[Callable[[], Any], int, torch.Tensor]
"""What `probe`'s make_runner returns for a candidate, after its warm-up (first call: trace, capture,
compile): (run one unit of work, items it processes, the candidate's result to compare with plain's)."""


# -- what the hardware has -----------------------------------------------------------------------
def _cpuinfo() -> dict[str, str]:
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key in ("model name", "flags", "Features") and key not in info:
                info[key] = value.strip()
    except OSError:
        pass
    return info


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform reports."""
    return _cpuinfo().get("model name") or platform.processor() or platform.machine()


def cpu_capability() -> str:
    """torch's vector ISA level on this CPU: DEFAULT, AVX2, AVX512, ..."""
    try:
        return str(torch.backends.cpu.get_cpu_capability())
    except Exception:  # noqa: BLE001 - older torch
        return "unknown"


def cpu_bf16_native() -> bool:
    """Whether this CPU computes bf16 natively: AVX512-BF16, or AMX tiles (Sapphire Rapids and later)."""
    checks = [getattr(torch.cpu, "_is_avx512_bf16_supported", None),
              getattr(getattr(torch._C, "_cpu", None), "_is_amx_tile_supported", None)]
    for check in checks:
        try:
            if check is not None and check():
                return True
        except Exception:  # noqa: BLE001 - a private query that may change between torch versions
            continue
    return False


def bf16_native(device: torch.device | str) -> bool:
    """Whether bf16 autocast can be fast on this device (CPU: AVX512-BF16 or AMX; CUDA: bf16 support)."""
    device = torch.device(device)
    if device.type == "cuda":
        return bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported())
    if device.type == "cpu":
        return cpu_bf16_native()
    return False


def tf32_native(device: torch.device | str) -> bool:
    """TF32 tensor cores: CUDA devices of compute capability 8.0 (Ampere) and later."""
    device = torch.device(device)
    return device.type == "cuda" and torch.cuda.is_available() and torch.cuda.get_device_capability(device)[0] >= 8


def device_label(device: torch.device | str) -> str:
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"{cpu_model()} ({cpu_capability()})" if device.type == "cpu" else device.type


def machine_fingerprint(device: torch.device | str) -> dict[str, Any]:
    """What makes timings on one machine valid on another: CPU model and flags, threads, torch, device."""
    info = _cpuinfo()
    flags = info.get("flags") or info.get("Features") or ""
    return {"cpu": cpu_model(), "cpu_flags": hashlib.sha256(flags.encode()).hexdigest()[:12],
            "cpu_capability": cpu_capability(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "device": device_label(device) if torch.device(device).type == "cuda" else torch.device(device).type,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "")}


# -- the probe ------------------------------------------------------------------------------------
@dataclass
class Candidate:
    name: str
    levers: dict[str, Any]
    """The lever values this candidate runs with (a FastPath's fields, for the caller to interpret)."""
    eligible: bool = True
    """Whether it may be chosen (plain is measured but not eligible when an explicit lever asks for more)."""


@dataclass
class Measured:
    name: str
    levers: dict[str, Any]
    rate: float = 0.0
    """Items per second: the median over rounds."""
    rates: list[float] = field(default_factory=list)
    warmup_s: float = 0.0
    error: float = 0.0
    """Relative L2 distance of its result to plain's."""
    within_tolerance: bool = True
    eligible: bool = True
    failed: str | None = None
    ratio: float = 1.0
    """rate / plain's rate."""
    chosen: bool = False


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref||, in float32 on the CPU; inf when out is not finite."""
    out, ref = out.detach().float().cpu(), ref.detach().float().cpu()
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return math.inf
    return float((out - ref).norm() / ref.norm().clamp_min(1e-12))


def probe(candidates: Sequence[Candidate], make_runner: Callable[[Candidate], Runner], budget_s: float,
          tolerance: float, clock: Callable[[], float] = time.perf_counter,
          sync: Callable[[], None] = lambda: None) -> list[Measured]:
    """Time every candidate on the same work, rounds interleaved (a, b, c, a, b, c, ...).

    candidates[0] is the plain path: the reference for the result (tolerance: relative L2 error of each
    candidate's result to plain's) and for the speed ratio. A candidate whose setup or step raises is
    recorded as failed, never chosen. The warm-ups and rounds together stay near budget_s (seconds): the
    first round times one call of each candidate and sizes the next ones; at least MIN_ROUNDS rounds of at
    least one call each, so a machine where one call outlasts the budget still gets a median of two.
    """
    measured: list[Measured] = []
    runners: dict[int, Runner] = {}
    started = clock()
    for i, cand in enumerate(candidates):
        m = Measured(cand.name, dict(cand.levers), eligible=cand.eligible)
        t0 = clock()
        try:
            runners[i] = make_runner(cand)
            sync()
        except Exception as exc:  # noqa: BLE001 - a lever that fails here is simply not chosen
            m.failed = f"{type(exc).__name__}: {exc}"[:300]
        m.warmup_s = clock() - t0
        measured.append(m)
    if 0 not in runners:
        raise RuntimeError(f"the plain path failed in the probe: {measured[0].failed}")
    ref = runners[0][2]
    for i, (run, items, out) in runners.items():
        measured[i].error = relative_error(out, ref)
        measured[i].within_tolerance = measured[i].error <= tolerance

    def timed(i: int, calls: int) -> float:
        run, items, _ = runners[i]
        t0 = clock()
        for _ in range(calls):
            run()
        sync()
        return max(clock() - t0, 1e-9)

    calls = {i: 1 for i in runners}  # the first round: one call each, which sizes the next rounds
    rounds = 0
    while True:
        seconds_per_call = {}
        for i in list(runners):
            try:
                took = timed(i, calls[i])
            except Exception as exc:  # noqa: BLE001
                measured[i].failed = f"{type(exc).__name__}: {exc}"[:300]
                runners.pop(i)
                continue
            measured[i].rates.append(calls[i] * runners[i][1] / took)
            seconds_per_call[i] = took / calls[i]
        if 0 not in runners:
            raise RuntimeError(f"the plain path failed in the probe: {measured[0].failed}")
        rounds += 1
        left = budget_s - (clock() - started)
        rounds_left = max(MIN_ROUNDS - rounds, TARGET_ROUNDS - rounds, 1)
        per_round = max(0.0, left) / rounds_left
        calls = {i: max(1, int(per_round / len(runners) / seconds_per_call[i])) for i in runners}
        next_round = sum(calls[i] * seconds_per_call[i] for i in runners)
        if rounds >= MIN_ROUNDS and (rounds >= MAX_ROUNDS or next_round > left):
            break
    for m in measured:
        m.rate = statistics.median(m.rates) if m.rates and not m.failed else 0.0
    base = measured[0].rate
    for m in measured:
        m.ratio = m.rate / base if base > 0 else 0.0
    return measured


def choose(measured: Sequence[Measured], margin: float = SPEEDUP_MARGIN) -> Measured:
    """The fastest eligible candidate within tolerance that beats plain (measured[0]) by margin, and in every
    round (rounds are interleaved, so a round's candidates share its load); else plain.

    When plain itself is not eligible (an explicit lever asks for more than plain), the fastest eligible
    candidate that did not fail is taken even without the margin, preferring those within tolerance."""
    plain = measured[0]
    ok = [m for m in measured[1:] if m.eligible and not m.failed and m.within_tolerance and m.rate > 0]
    if plain.eligible:
        faster = [m for m in ok if m.rate >= margin * plain.rate and beats_every_round(m, plain)]
        best = max(faster, key=lambda m: m.rate) if faster else plain
    else:
        pool = ok or [m for m in measured[1:] if m.eligible and not m.failed]
        if not pool:
            raise RuntimeError("every candidate allowed by the explicit levers failed in the probe: "
                               + "; ".join(f"{m.name}: {m.failed}" for m in measured[1:]))
        best = max(pool, key=lambda m: m.rate)
    for m in measured:
        m.chosen = m is best
    return best


def beats_every_round(m: Measured, plain: Measured) -> bool:
    """Faster than plain in each interleaved round: on a loaded machine a median alone can be a lucky round."""
    return bool(m.rates) and all(a > b for a, b in zip(m.rates, plain.rates))


def table(measured: Sequence[Measured], unit: str = "img/s") -> str:
    """The probe as a markdown table (for the run's artifact and the log)."""
    rows = [f"| candidate | {unit} | ratio to plain | warm-up s | rel. error to plain | chosen |", "|---|---|---|---|---|---|"]
    for m in measured:
        note = f"failed: {m.failed}" if m.failed else ("**chosen**" if m.chosen else
                                                        ("" if m.within_tolerance else "outside tolerance"))
        rows.append(f"| {m.name} | {m.rate:.0f} | {m.ratio:.2f}x | {m.warmup_s:.1f} | {m.error:.1e} | {note} |")
    return "\n".join(rows)


def to_dict(measured: Sequence[Measured]) -> list[dict[str, Any]]:
    return [asdict(m) for m in measured]


def from_dict(rows: Sequence[dict[str, Any]]) -> list[Measured]:
    return [Measured(**row) for row in rows]


# -- the cache ------------------------------------------------------------------------------------
class ProbeCache:
    """Probe results on disk, one JSON file per (machine, probe) key, written atomically.

    A rerun on the same machine reads the same numbers, so it resolves the same levers and plans the same
    epochs (and keeps its stage's cache key); another machine, thread count or torch gets its own entry."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)

    def path(self, key: str) -> Path:
        return self.folder / f"probe-{key}.json"

    @staticmethod
    def key(fingerprint: dict[str, Any], spec: dict[str, Any]) -> str:
        blob = json.dumps([PROBE_VERSION, fingerprint, spec], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode()).hexdigest()[:20]

    def get(self, key: str) -> dict[str, Any] | None:
        path = self.path(key)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and data.get("version") == PROBE_VERSION else None

    def put(self, key: str, entry: dict[str, Any]) -> Path:
        path = self.path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({**entry, "version": PROBE_VERSION}, indent=1, default=str))
        os.replace(tmp, path)
        return path


# -- planning to a budget -------------------------------------------------------------------------
def plan_epochs(seconds: float, img_per_s: float, n_train: int, floor: int, ceiling: int,
                epoch_overhead_s: float = 0.0) -> int:
    """Epochs of n_train images that fit `seconds` at img_per_s, each epoch also costing epoch_overhead_s
    (checkpoints, logging); clamped to [floor, ceiling] (the floor wins if they cross)."""
    per_epoch = n_train / max(img_per_s, 1e-9) + epoch_overhead_s
    fit = int(max(0.0, seconds) // per_epoch)
    return max(floor, min(ceiling, fit))


def plan_samples(seconds: float, seconds_per_sample: float, floor: int, ceiling: int, multiple: int = 10) -> int:
    """Samples that fit `seconds` at seconds_per_sample, rounded down to a multiple (every digit alike),
    clamped to [floor, ceiling] (the floor wins if they cross)."""
    fit = int(max(0.0, seconds) / max(seconds_per_sample, 1e-12))
    fit -= fit % multiple
    return max(floor, min(ceiling, fit))
