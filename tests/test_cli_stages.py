"""The per-stage CLI commands and Prefect flows come from one list, names.PART_B_STAGES, and keep today's names
(Prefect deployments and MLflow tags reference flow names; scripts and users type the commands)."""

from __future__ import annotations

import pytest
from prefect import Flow

from difflab import names
from difflab.cli import FLOWS, parser, stage_command, stage_commands
from difflab.cli.repo import load
from difflab.config import PartBConfig
from difflab.stages import STAGES


def test_every_stage_has_a_command_running_its_own_flow():
    for key, run in names.PART_B_STAGES.items():
        flow_ref, config_ref, help_text = FLOWS[stage_command(run)]
        flow = load(flow_ref)
        assert isinstance(flow, Flow) and flow.name == names.stage_flow(run)
        assert load(config_ref) is PartBConfig
        assert help_text == names.PART_B_STAGE_TITLES[key]


def test_the_commands_and_flows_keep_todays_names_and_order():
    from flows.part_b import STAGE_FLOWS

    assert list(FLOWS) == ["part-b", "train-denoiser", "train-time-ddpm", "train-class-ddpm", "part-a", "pipeline",
                           "compare", "sweep"]
    assert [f.name for f in STAGE_FLOWS.values()] == ["train_denoiser", "train_time_ddpm", "train_class_ddpm"]
    assert [f.fn.__name__ for f in STAGE_FLOWS.values()] == ["train_denoiser_flow", "train_time_ddpm_flow",
                                                             "train_class_ddpm_flow"]
    assert [FLOWS[c][2] for c in ("train-denoiser", "train-time-ddpm", "train-class-ddpm")] == [
        "the single-step denoiser", "the time-conditioned DDPM", "the class-conditioned DDPM"]
    shown = parser().format_help()
    for command, (_, _, help_text) in FLOWS.items():
        assert command in shown and help_text in shown


def test_the_stage_lists_agree():
    from flows.part_b import STAGE_FLOWS

    assert list(names.PART_B_STAGE_TITLES) == list(names.PART_B_STAGES) == list(STAGES) == list(STAGE_FLOWS)
    assert [c for c in FLOWS if c.startswith("train-")] == [stage_command(r) for r in names.PART_B_STAGES.values()]


def test_a_new_stage_gets_a_command_and_a_flow_from_its_entry(monkeypatch):
    """What adding a stage to names.PART_B_STAGES gives without another edit: its command and its flow."""
    import flows.part_b as part_b

    monkeypatch.setitem(names.PART_B_STAGES, "latent", "latent_ddpm")
    commands = stage_commands(names.PART_B_STAGES, {**names.PART_B_STAGE_TITLES, "latent": "a latent DDPM"})
    assert list(commands)[-1] == "train-latent-ddpm"
    assert commands["train-latent-ddpm"] == ("flows.part_b:train_latent_ddpm_flow", "difflab.config:PartBConfig",
                                             "a latent DDPM")
    flow = part_b._stage_flow("latent")
    assert flow.name == "train_latent_ddpm" and flow.fn.__name__ == "train_latent_ddpm_flow"
    assert list(flow.parameters.properties) == ["config"]


@pytest.mark.parametrize("command", [c for c in FLOWS if c.startswith("train-")])
def test_a_stage_command_resolves_its_config_like_part_b(command):
    """A stage command takes the same flags as part-b and builds the same config."""
    from difflab.cli import build_config

    args = parser().parse_args([command, "--profile", "tiny", "--set", "class_ddpm.epochs=2"])
    base = parser().parse_args(["part-b", "--profile", "tiny", "--set", "class_ddpm.epochs=2"])
    assert build_config(FLOWS[command][1], args) == build_config(FLOWS["part-b"][1], base)
    assert build_config(FLOWS[command][1], args).class_ddpm.epochs == 2
