"""Operations seen from the flows: the champion alias and its quality gate, and the Prefect artifacts
that link a flow run to its MLflow run and show its headline numbers."""

from __future__ import annotations

from mlflow.tracking import MlflowClient

from difflab.config import PartBConfig, PromotionGate, TrackingConfig

TINY_CLASS = {"profile": "tiny", "stages": ["class"], "data": {"max_train": 96},
              "class_ddpm": {"num_timesteps": 10}, "evaluation": {"num_samples": 50}}
MODEL = "difflab-class-ddpm"


def _artifacts(key: str) -> list:
    """Every version of a keyed artifact, newest first (the test session shares one Prefect server)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        return client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key])),
                                     sort=ArtifactSort.CREATED_DESC)


def test_gate_decisions():
    from tasks.promotion import promotion_decision

    auto = TrackingConfig()
    good = {"class_agreement": 0.97, "class_frechet": 50.0}
    assert promotion_decision(auto, "quick", False, good)[0]
    assert not promotion_decision(auto, "tiny", False, good)[0]
    assert not promotion_decision(auto, "quick", True, good)[0]
    assert not promotion_decision(auto, "quick", False, {"class_agreement": 0.5})[0]
    assert not promotion_decision(auto, "quick", False, {})[0]
    strict = TrackingConfig(gate=PromotionGate(max_class_frechet=40.0))
    assert "Frechet" in promotion_decision(strict, "course", False, good)[1]
    assert promotion_decision(TrackingConfig(promote="always"), "tiny", True, {})[0]
    assert not promotion_decision(TrackingConfig(promote="never"), "course", False, good)[0]


def test_smoke_runs_never_become_the_champion_and_part_a_uses_the_alias(prefect_harness, mlflow_store, capsys):
    from difflab.cli import main
    from flows.part_a import part_a
    from flows.part_b import part_b

    client = MlflowClient()
    smoke = part_b(config=PartBConfig(**TINY_CLASS))
    stage_run = smoke["stages"]["class"]["run_id"]
    [version] = client.search_model_versions(f"name = '{MODEL}'")
    assert version.run_id == stage_run and version.tags["profile"] == "tiny"
    assert "eval.class_agreement" in version.tags and "metric.final_loss" in version.tags
    assert not client.get_registered_model(MODEL).aliases
    assert "not moved" in client.get_run(smoke["run_id"]).data.tags["difflab.promotion"]

    # Part A refuses the smoke model: there is no champion yet, and it says how to get one.
    assert main(["part-a", "--set", 'sections=["sample"]']) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"models:/{MODEL}@champion" in err and "difflab part-b" in err and "runs promote" in err

    # A run the gate lets through (here: tiny allowed, any agreement) moves the alias.
    gated = part_b(config=PartBConfig(**TINY_CLASS, tracking={"gate": {"skip_profiles": [],
                                                                        "min_class_agreement": 0.0}}))
    assert "moved" in client.get_run(gated["run_id"]).data.tags["difflab.promotion"]
    champion = client.get_model_version_by_alias(MODEL, "champion")
    assert champion.run_id == gated["stages"]["class"]["run_id"]

    a = part_a(config={"sections": ["sample"], "num_inference_steps": [3], "num_samples": 1})
    assert client.get_run(a["run_id"]).data.params["model.run_id"] == champion.run_id

    # Prefect artifacts: the MLflow run's link and the headline numbers of both flows.
    links = _artifacts("part-b-mlflow-run")
    assert any(gated["run_id"] in link.data for link in links)
    summary = _artifacts("part-b-summary")[0].data
    assert "eval.class_agreement" in summary and "class_ddpm.final_loss" in summary
    assert "difflab.promotion" in summary
    part_a_summary = _artifacts("part-a-summary")[0].data
    assert "part_a/sample" in part_a_summary and "backend: mnist" in part_a_summary
    assert any(a["run_id"] in link.data for link in _artifacts("part-a-mlflow-run"))


def test_summary_links_the_report_page_once_a_run_has_one(prefect_harness, mlflow_store):
    from prefect import flow

    from difflab import tracking
    from tasks.summary import REPORT_URL_TAG, publish_summary

    tracking.configure()
    with tracking.run("part_b-tiny", "difflab", tags={REPORT_URL_TAG: "http://reports.example/run/1", "profile": "tiny"}) as rid:
        tracking.log_metrics({"denoiser.final_loss": 0.5})

    @flow
    def publishes():
        publish_summary("part_b", rid)

    publishes()
    assert any("(http://reports.example/run/1)" in a.data for a in _artifacts("part-b-report"))
    assert "| denoiser.final_loss | 0.5 |" in _artifacts("part-b-summary")[0].data
