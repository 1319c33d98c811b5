"""What every config class shares: strict parsing, the Prefect form's schema rule, value types, the workdir."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from difflab.files import WORKDIR_ENV, workdir  # noqa: F401  (re-exported: difflab.config.workdir)


class _Strict(BaseModel):
    # allow_inf_nan=False: a NaN guidance or learning rate is an error at parse time, not black images later.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _from_profile(schema: dict[str, Any], cls: type) -> None:
    """JSON schema (Prefect's run form) of a config whose values come from a profile: no field shows a default,
    because a default shown is a value sent. The form fills every field it has a default for and submits it, so
    a `part_b/tiny` run started unchanged from the Prefect UI trained with the course's widths and epochs under
    the name part_b-tiny. A field left empty is left out, and takes the profile's value (PartBConfig's
    _apply_profile); its description names the course value."""
    for name, prop in schema.get("properties", {}).items():
        if "$ref" in prop or "allOf" in prop:
            continue
        note = "Left empty: the profile's value"
        if name == "profile":  # nor the profile: a pipeline's part_b.profile filled with auto would beat its profile
            prop.pop("default", None)
            note = "Left empty: auto (course on a GPU, quick on a CPU)"
        elif "default" in prop:
            note += f" (course: {json.dumps(prop.pop('default'))})"
        prop["description"] = f"{prop['description']} {note}." if prop.get("description") else note + "."
        if prop.get("type") == "boolean":  # a toggle has no empty state: the form sends false when it is untouched
            del prop["type"]
            prop["enum"] = [True, False]  # a choice, empty until a person picks one
        elif any(m.get("type") == "boolean" for m in prop.get("anyOf", [])) and all(
                m.get("type") == "boolean" or "const" in m for m in prop["anyOf"]):  # a lever: true, false or auto
            prop["enum"] = [v for m in prop.pop("anyOf") for v in ([True, False] if "const" not in m else [m["const"]])]


FROM_PROFILE = ConfigDict(json_schema_extra=_from_profile)
"""model_config of every config a profile sets (PartBConfig and what it nests): see _from_profile."""

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]
Epoch = Annotated[int, Field(ge=1)]
"""Snapshot epochs are 1-based; one past the configured epochs is taken at the last epoch (see plan_training)."""
Sigma = Annotated[float, Field(ge=0)]


Auto = Literal["auto"]
"""A lever's `auto`: decided on the machine at hand (difflab.autotune), by the hardware or a short probe."""
