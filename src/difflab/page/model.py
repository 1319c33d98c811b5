"""What the page is drawn from: plain data about a run tree (`RunData` -> `StageData` -> `PageImage`), built
from MLflow by `page.gather` or by hand in tests, and the page's own settings (`PageConfig`)."""

from __future__ import annotations

import base64
import io

from pydantic import BaseModel, ConfigDict, Field

MIME = {".png": "image/png", ".gif": "image/gif", ".jpg": "image/jpeg", ".jpeg": "image/jpeg",
        ".webp": "image/webp", ".svg": "image/svg+xml"}


class PageConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_image_px: int = Field(96, gt=0)
    """Images narrower than this (a 7x7 hybrid) are enlarged by a whole factor, pixels kept sharp."""
    max_value_chars: int = Field(90, gt=0)
    """Longer param values are cut in captions (the run link has them in full)."""
    float_digits: int = Field(4, gt=0)
    """Significant digits of numbers in tables."""


class PageImage(BaseModel):
    name: str
    """The image's key: `samples` for a stepped image, else the file's stem (`loss_curve`)."""
    path: str
    """Where it is in its run's artifacts."""
    mime: str
    data: str
    """base64 of the file."""
    step: int | None = None
    width: int = 0
    height: int = 0

    @classmethod
    def from_bytes(cls, name: str, path: str, raw: bytes, step: int | None = None) -> "PageImage":
        suffix = "." + path.rsplit(".", 1)[-1].lower() if "." in path else ""
        width = height = 0
        try:
            from PIL import Image

            with Image.open(io.BytesIO(raw)) as im:
                width, height = im.size
        except Exception:  # noqa: BLE001 - an unreadable image still gets shown, at its own size
            pass
        return cls(name=name, path=path, mime=MIME.get(suffix, "application/octet-stream"),
                   data=base64.b64encode(raw).decode("ascii"), step=step, width=width, height=height)

    def uri(self) -> str:
        return f"data:{self.mime};base64,{self.data}"


class StageData(BaseModel):
    """One nested run: a Part B stage, the evaluation, a Part A section, or a flow's own parent run."""

    name: str
    run_id: str
    url: str = ""
    status: str = ""
    seconds: float | None = None
    reused_from: str | None = None
    """The original run whose results this stage reused (its images are shown)."""
    reused_from_url: str = ""
    original_seconds: float | None = None
    params: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    images: list[PageImage] = Field(default_factory=list)


class RunData(BaseModel):
    """A pipeline, part_b or part_a run with every stage under it, keyed by stage name
    (`part_b`, `denoiser`, `sample_class_ddpm`, `evaluation`, `part_a`, `part_a/sdedit`, ...)."""

    run_id: str
    name: str
    url: str = ""
    flow: str = ""
    status: str = ""
    start_ms: int | None = None
    seconds: float | None = None
    tracking_uri: str = ""
    params: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    tags: dict[str, str] = Field(default_factory=dict)
    stages: dict[str, StageData] = Field(default_factory=dict)
