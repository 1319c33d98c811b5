"""What Prefect's run form sends is what runs: no field of a profile-governed config shows (and so submits) a
default; what a run changed on top of its profile is recorded with it; a cancelled run says so, and from where.

The form itself, in a real browser against a real stack, is tests/test_ops_run_form.py.
"""

from __future__ import annotations

import pytest
from prefect.exceptions import TerminationSignal

from difflab import tracking
from difflab.config import PartBConfig, PipelineConfig, describe_overrides, flatten_params, profile_overrides


def _schema(flow) -> dict:
    from prefect.utilities.callables import parameter_schema

    return parameter_schema(flow.fn).model_dump()


def form_prefill(schema: dict, node: dict | None = None, values: dict | None = None) -> dict:
    """What a schema-driven form puts in every field it is not given a value for: each property's default, false
    for a boolean (a toggle), nested objects (through $ref) filled the same way. Prefect's Custom run form does
    this (tests/test_ops_e2e.py drives the real one)."""
    defs = schema.get("definitions") or schema.get("$defs") or {}
    node = node if node is not None else schema
    if "$ref" in node:
        node = defs[node["$ref"].rsplit("/", 1)[-1]]
    for alt in node.get("anyOf", []):  # `PartBConfig | None`: the object branch
        if "$ref" in alt:
            return form_prefill(schema, alt, values)
    out = dict(values or {})
    for key, prop in node.get("properties", {}).items():
        sub = prop if ("$ref" in prop or "anyOf" in prop) else None
        if sub is not None and isinstance(out.get(key, {}), dict):
            filled = form_prefill(schema, sub, out.get(key))
            if filled:
                out[key] = filled
        elif key not in out and "default" in prop:
            out[key] = prop["default"]
        elif key not in out and prop.get("type") == "boolean":
            out[key] = False  # a toggle has no empty state: untouched, the form sends false (seen in Prefect 3.9)
    return out


def test_the_part_b_form_prefills_nothing_but_the_profile_so_an_unchanged_submit_runs_the_profile():
    """The bug: the form showed 'Profile: tiny' and filled every other field with the course value, and sent them:
    a part_b/tiny run trained a D=128 denoiser for 74 epochs. Now nothing but the profile has a default to fill."""
    from flows.part_b import part_b

    sent = form_prefill(_schema(part_b), values={"config": {"profile": "tiny"}})
    assert sent["config"] == {"profile": "tiny"}, sent["config"]
    assert PartBConfig.model_validate(sent["config"]) == PartBConfig(profile="tiny")
    denoiser = _schema(part_b)["definitions"]["DenoiserConfig"]["properties"]["hidden"]
    assert "default" not in denoiser and "course: 128" in denoiser["description"]  # the form still says what it is


def test_the_pipeline_form_leaves_part_b_to_its_profile():
    from flows.pipeline import pipeline

    sent = form_prefill(_schema(pipeline), values={"config": {"profile": "tiny"}})
    cfg = PipelineConfig.model_validate(sent["config"])
    assert cfg.part_b == PartBConfig(profile="tiny")
    assert cfg.part_a.guidance == 7.0 and cfg.run_part_a  # Part A has no profile: its own defaults stay


def test_a_field_changed_in_the_form_is_the_only_override_and_is_recorded():
    cfg = PartBConfig.model_validate({"profile": "tiny", "class_ddpm": {"guidance": 3.0}})
    assert cfg.class_ddpm.hidden == 4 and cfg.class_ddpm.guidance == 3.0
    assert profile_overrides(cfg) == {"class_ddpm.guidance": 3.0}
    assert describe_overrides(profile_overrides(PartBConfig(profile="tiny"))) == "none"
    # a value equal to the profile's is no override; course values under tiny are, each named
    mixed = PartBConfig(profile="tiny", denoiser={"hidden": 128, "epochs": 2})
    assert describe_overrides(profile_overrides(mixed)) == "denoiser.hidden=128"
    assert flatten_params(mixed)["denoiser.hidden"] == 128


def test_profile_tags_carry_the_overrides_and_a_run_description():
    from flows.part_b import PROFILE_OVERRIDES_TAG, profile_tags

    tags = profile_tags(PartBConfig(profile="tiny", class_ddpm={"guidance": 3.0}))
    assert tags[PROFILE_OVERRIDES_TAG] == "class_ddpm.guidance=3.0"
    assert tags["mlflow.note.content"] == "Profile tiny, changed: class_ddpm.guidance=3.0"
    assert profile_tags(PartBConfig(profile="tiny"))[PROFILE_OVERRIDES_TAG] == "none"


def test_a_cancel_from_prefect_is_recorded_as_a_cancel_not_an_empty_signal(mlflow_store, monkeypatch):
    """Prefect's worker stops a cancelled flow run's process with SIGTERM, which the engine raises as
    TerminationSignal (str(): ''); the run said only `TerminationSignal: `. The runner's control intent says
    whether it was a cancel."""
    from mlflow.tracking import MlflowClient

    import prefect._internal.control_listener as control

    monkeypatch.setattr(control, "get_intent", lambda: "cancel")
    tracking.configure()
    with pytest.raises(TerminationSignal):
        with tracking.run("part_b-tiny", "difflab") as run_id:
            raise TerminationSignal(15)
    run = MlflowClient().get_run(run_id)
    assert run.info.status == "KILLED"
    error = run.data.tags[tracking.ERROR_TAG]
    assert error.startswith("cancelled in Prefect:") and "SIGTERM" in error and "Prefect UI" in error

    monkeypatch.setattr(control, "get_intent", lambda: None)
    assert tracking.stop_reason(TerminationSignal(15)).startswith("stopped by SIGTERM from outside Prefect")
    assert tracking.stop_reason(ValueError("x")) is None
