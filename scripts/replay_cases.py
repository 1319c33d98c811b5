"""Replay every real-world case in ../shared/cases against this checkout and print a verdict per case.

    python scripts/replay_cases.py                 # all cases; trains a tiny class DDPM once for CKPT
    python scripts/replay_cases.py --only 05 12    # cases whose folder name starts so
    CKPT=path/to/final.pt python scripts/replay_cases.py

Each case folder holds a README.md (with an **Expected** line) and a run.sh that takes DL (the difflab
executable) and CKPT (a class-conditioned DDPM checkpoint). DL here is a wrapper that runs this checkout's
code (`python -m difflab.cli` with src/ and the repository root on PYTHONPATH) and sits beside a `python`
wrapper, which the cases' check.py scripts use. A verdict is PASS when the outcome is what Expected says:
the exit statuses allowed, no traceback and no retry behind a user error (exit 2), every check.py
verdict good, and the words the one-line message must carry. Cases not in KNOWN (added later) get the
generic rules, read from their Expected line. Exit status: 0 when every case passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CASES = REPO.parent / "shared" / "cases"
CASE_TIMEOUT_S = 1200

# folder-name prefix -> what Expected asks, in checkable terms:
#   exits: the allowed exit status of each `difflab exit status` line, in order (a set per line)
#   words: substrings the error/last line must contain (case-insensitive) when the exit is 2
#   extra: substrings the whole output must contain
KNOWN: dict[str, dict] = {
    "01": {"exits": [{0, 2}]},
    "04": {"exits": [{0, 2}]},
    "05": {"exits": [{2}], "words": ["huge_scan.png", "downscale"]},
    "06": {"exits": [{2}], "words": ["half_uploaded_0.jpg", "truncated"]},
    "07": {"exits": [{0, 2}]},
    "09": {"exits": [{0, 2}]},
    "12": {"exits": [{2}], "words": ["0..9"], "extra": ["registered model versions: []"]},
    "14": {"exits": [{2}], "words": ["PREFECT_API_URL"], "extra": ["output lines: 1"]},
    "15": {"exits": [{0}, {2}, {0}], "words": ["filter", "quote"]},
}


def expected_line(case: Path) -> str:
    text = (case / "README.md").read_text() if (case / "README.md").exists() else ""
    m = re.search(r"\*\*Expected\*\*:\s*(.*)", text)
    return m.group(1).strip() if m else "(no Expected line)"


def rules_for(case: Path) -> dict:
    for prefix, rules in KNOWN.items():
        if case.name.startswith(prefix + "-"):
            return rules
    # generic: 'exit 2' alone means a refusal; 'X, or ... exit 2' allows either
    exp = expected_line(case)
    if "exit 2" in exp and not re.search(r"\bor\b", exp.split("exit 2")[0]):
        return {"exits_all": {2}}
    return {"exits_all": {0, 2}}


def wrappers(folder: Path) -> Path:
    """bin/difflab and bin/python running this checkout with the interpreter running this script."""
    bin_dir = folder / "bin"
    bin_dir.mkdir(parents=True, exist_ok=True)
    path = f"{REPO / 'src'}:{REPO}"
    for name, args in (("difflab", "-m difflab.cli"), ("python", "")):
        script = bin_dir / name
        script.write_text(f"#!/usr/bin/env bash\nexport PYTHONPATH={shlex.quote(path)}${{PYTHONPATH:+:$PYTHONPATH}}\n"
                          f"exec {shlex.quote(sys.executable)} {args} \"$@\"\n")
        script.chmod(0o755)
    return bin_dir / "difflab"


def train_checkpoint(dl: Path, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    print("training a tiny class-conditioned DDPM for CKPT ...", flush=True)
    done = subprocess.run([str(dl), "train-class-ddpm", "--profile", "tiny", "--set", "tracking.register_models=false"],
                          cwd=folder, capture_output=True, text=True, env={**os.environ, "PREFECT_HOME": str(folder / "prefect")})
    found = sorted(folder.glob(".difflab/checkpoints/*/final.pt"))
    if done.returncode != 0 or not found:
        sys.exit(f"replay: training the checkpoint failed (exit {done.returncode}):\n{done.stderr[-2000:]}")
    return found[0]


def judge(case: Path, out: str) -> list[str]:
    """What went against Expected ([] = PASS)."""
    rules = rules_for(case)
    problems = []
    exits = [int(x) for x in re.findall(r"\S+ exit status: (-?\d+)", out)]
    if not exits:
        return ["no `difflab exit status` line (run.sh failed?)"]
    if "exits" in rules:
        if len(exits) != len(rules["exits"]):
            problems.append(f"{len(exits)} exit statuses, expected {len(rules['exits'])}")
        for got, allowed in zip(exits, rules["exits"]):
            if got not in allowed:
                problems.append(f"exit {got}, expected {' or '.join(map(str, sorted(allowed)))}")
    else:
        problems += [f"exit {e}, expected {' or '.join(map(str, sorted(rules['exits_all'])))}"
                     for e in exits if e not in rules["exits_all"]]
    if 2 in exits:
        problems += [f"{n} tracebacks printed behind a user error" for n in re.findall(r"tracebacks printed: (\d+)", out)
                     if int(n)]
        problems += [f"{n} retries of a user error" for n in re.findall(r"retries of a failed task: (\d+)", out) if int(n)]
        message = " ".join(re.findall(r"(?:error line|last line): (.*)", out) +
                           re.findall(r"difflab: error: .*", out)).lower()
        problems += [f"the message lacks {w!r}" for w in rules.get("words", []) if w.lower() not in message]
    for verdict in re.findall(r"VERDICT: (.*)", out):
        if re.search(r"\b[A-Z]{3,}\b", verdict):  # the checks shout what went wrong: NOT, LOST, MISREAD
            problems.append(f"check: {verdict.strip()}")
    problems += [f"output lacks {w!r}" for w in rules.get("extra", []) if w not in out]
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=Path, default=DEFAULT_CASES, help=f"the cases folder (default {DEFAULT_CASES})")
    p.add_argument("--only", nargs="*", default=[], help="run only cases whose folder name starts with these")
    p.add_argument("-v", "--verbose", action="store_true", help="print each case's run.sh output")
    args = p.parse_args(argv)
    cases = sorted(c for c in args.cases.iterdir() if (c / "run.sh").is_file()) if args.cases.is_dir() else []
    cases = [c for c in cases if not args.only or any(c.name.startswith(o) for o in args.only)]
    if not cases:
        print(f"replay: no cases under {args.cases}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="difflab-replay-"))
    dl = wrappers(work)
    ckpt = Path(os.environ["CKPT"]) if os.environ.get("CKPT") else train_checkpoint(dl, work / "ckpt")
    failed = 0
    for case in cases:
        started = time.monotonic()
        try:
            done = subprocess.run(["bash", str(case / "run.sh")], capture_output=True, text=True, timeout=CASE_TIMEOUT_S,
                                  env={**os.environ, "DL": str(dl), "CKPT": str(ckpt),
                                       "PREFECT_HOME": os.environ.get("PREFECT_HOME") or str(work / "prefect")})
            out = done.stdout + done.stderr
            problems = judge(case, out)
        except subprocess.TimeoutExpired:
            out, problems = "", [f"still running after {CASE_TIMEOUT_S} s"]
        failed += bool(problems)
        print(f"{'PASS' if not problems else 'FAIL'}  {case.name}  ({time.monotonic() - started:.0f} s)")
        print(f"      expected: {expected_line(case)}")
        for line in re.findall(r"(?:\S+ exit status|error line|last line|VERDICT|registered model versions).*", out):
            print(f"      {line[:300]}")
        for problem in problems:
            print(f"      -> {problem}")
        if args.verbose:
            print("\n".join("      | " + line for line in out.splitlines()))
        sys.stdout.flush()
    print(f"{len(cases) - failed}/{len(cases)} cases behave as expected (work folder {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
