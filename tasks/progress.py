"""Per-epoch progress: a console bar and a Prefect progress artifact."""

from __future__ import annotations

import contextlib
import sys

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
