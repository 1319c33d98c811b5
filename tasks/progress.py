"""Progress: per-epoch (a console bar with its ETA and a Prefect progress artifact), and a ticker with an
ETA for long steps that report nothing themselves."""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from typing import Callable

from tqdm.auto import tqdm


class EpochProgress:
    last: tuple[str, int, int] | None = None
    """(stage, epochs done, total) of the newest training in this process, kept after it ends: what the CLI
    names when Ctrl-C stops a run ("interrupted at time_ddpm epoch 13/36")."""

    def __init__(self, stage: str, total_epochs: int, start: int = 0):
        self.stage, self.total = stage, total_epochs
        EpochProgress.last = (stage, start, total_epochs)
        self.bar = tqdm(total=total_epochs, initial=start, desc=stage, unit="epoch", file=sys.stderr,
                        dynamic_ncols=True, leave=True)
        self.artifact_id = None
        with contextlib.suppress(Exception):  # outside a Prefect run there is nowhere to publish
            from prefect.artifacts import create_progress_artifact

            self.artifact_id = create_progress_artifact(100.0 * start / max(1, total_epochs),
                                                        description=f"{stage}: epochs done")

    def update(self, epoch: int, loss: float) -> None:
        EpochProgress.last = (self.stage, epoch, self.total)
        self.bar.update(1)
        self.bar.set_postfix(loss=f"{loss:.4f}")
        if self.artifact_id is not None:
            with contextlib.suppress(Exception):
                from prefect.artifacts import update_progress_artifact

                update_progress_artifact(self.artifact_id, 100.0 * epoch / max(1, self.total),
                                         description=f"{self.stage}: epoch {epoch}/{self.total}, loss {loss:.4f}")

    def close(self) -> None:
        self.bar.close()


class Ticker:
    """A line every `every_s` seconds while a long step runs that reports nothing itself (sampling a
    thousand digits): elapsed time, the plan's estimate and the expected end (ETA), then one line when done."""

    def __init__(self, what: str, estimate_s: float, log: Callable[[str], None], every_s: float = 30.0):
        self.what, self.estimate_s, self.log, self.every_s = what, estimate_s, log, every_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.started = 0.0

    def line(self, now: float) -> str:
        elapsed = now - self.started
        if not self.estimate_s:
            return f"{self.what}: {elapsed:.0f} s so far"
        if elapsed <= self.estimate_s:
            eta = time.strftime("%H:%M:%S", time.localtime(self.started + self.estimate_s))
            return (f"{self.what}: {elapsed:.0f} s of about {self.estimate_s:.0f} s "
                    f"({100 * elapsed / self.estimate_s:.0f} %), ETA {eta}")
        return f"{self.what}: {elapsed:.0f} s, {elapsed - self.estimate_s:.0f} s past its estimate of {self.estimate_s:.0f} s"

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            with contextlib.suppress(Exception):
                self.log(self.line(time.time()))

    def __enter__(self) -> "Ticker":
        self.started = time.time()
        eta = f", ETA {time.strftime('%H:%M:%S', time.localtime(self.started + self.estimate_s))}" \
            if self.estimate_s else ""
        self.log(f"{self.what}: started" + (f", about {self.estimate_s:.0f} s{eta}" if self.estimate_s else ""))
        self._thread = threading.Thread(target=self._run, name=f"ticker-{self.what}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self.log(f"{self.what}: done in {time.time() - self.started:.0f} s"
                 + (f" (estimate {self.estimate_s:.0f} s)" if self.estimate_s else ""))
