"""Every image the report page reads is one a stage logs: both sides take their names from difflab.names."""

from __future__ import annotations

import ast
import fnmatch
from pathlib import Path

import pytest
import torch

from difflab import names
from difflab import page as report_page

ROOT = Path(__file__).resolve().parents[1]


def _figures():
    return [f for section in report_page.SECTIONS for f in section.figures]


@pytest.mark.parametrize("fig", _figures(), ids=lambda f: f"{f.stage}:{f.pattern}")
def test_every_image_the_page_reads_is_one_a_stage_logs(fig):
    logged = names.IMAGES.get(fig.stage, ())
    assert any(fnmatch.fnmatchcase(n, fig.pattern) for n in logged), \
        f"the page shows {fig.pattern!r} from {fig.stage!r}, which logs {logged}"


def test_the_check_fails_for_a_renamed_image():
    fig = report_page.Fig("denoiser", "noising_grid_renamed", "t", "w", ())
    assert not any(fnmatch.fnmatchcase(n, fig.pattern) for n in names.IMAGES[fig.stage])


def _log_image_name_args(path: Path) -> list[ast.expr]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "log_image" \
                and len(node.args) >= 2:
            found.append(node.args[1])
    return found


def _mentions_names(node: ast.expr) -> bool:
    return any(isinstance(n, ast.Name) and n.id == "names" for n in ast.walk(node))


@pytest.mark.parametrize("path", sorted((ROOT / "tasks").glob("*.py")), ids=lambda p: p.name)
def test_writers_log_images_under_names_from_the_names_module(path):
    """A bare string as an image name in a task would bypass the contract the page reads."""
    for arg in _log_image_name_args(path):
        literal = isinstance(arg, (ast.Constant, ast.JoinedStr))
        assert not literal or _mentions_names(arg), f"{path.name}:{arg.lineno} logs an image under a bare string"


@pytest.fixture
def logged_images(monkeypatch):
    from difflab import tracking

    seen: list[str] = []
    monkeypatch.setattr(tracking, "log_image", lambda image, name, step=None: seen.append(name))
    monkeypatch.setattr(tracking, "log_metrics", lambda *a, **k: None)
    return seen


def test_part_b_stages_log_the_images_named_for_them():
    from difflab.config import PartBConfig
    from difflab.ddpm import DDPMSchedule
    from difflab.stages import STAGES
    from difflab.unet import build_model

    torch.manual_seed(0)
    cfg = PartBConfig.model_validate({"profile": "tiny"})
    x = torch.rand(12, 1, 28, 28)
    for st in STAGES.values():
        scfg = st.config(cfg)
        model = build_model(st.model_kind, hidden=4).eval()
        schedule = DDPMSchedule(scfg.num_timesteps, scfg.beta1, scfg.beta2) if hasattr(scfg, "num_timesteps") else None
        figs = {**st.figures_before(scfg, x, 0), **st.figures_at_epoch(model, scfg, schedule, x, 0, 1),
                **st.figures_after(model, scfg, x, 0)}
        assert set(figs) | {names.LOSS_CURVE} == set(names.IMAGES[st.name]), st.name


def test_part_a_sections_log_the_images_named_for_them(logged_images):
    """Each section of tasks/edits.py run on an oracle backend; the names it logs are the ones declared."""
    from difflab.config import PartAConfig
    from tasks.edits import SECTIONS
    from test_edits_support import OracleBackend

    targets = torch.rand(10, 1, 28, 28) * 2 - 1
    b = OracleBackend(targets, T=300)
    cfg = PartAConfig(num_samples=1, num_inference_steps=[3], prompts=["1", "2"], cfg_conditions=["3"])
    image = targets[:1]
    for key, run in SECTIONS.items():
        logged_images.clear()
        run(cfg, b, image)
        declared = set(names.IMAGES[f"part_a/{key}"])
        assert set(logged_images) <= declared, key
        assert declared - names.OPTIONAL_IMAGES <= set(logged_images), key


def test_the_stage_order_is_written_once_and_every_list_follows_it():
    from difflab.config import PART_A_SECTIONS, PartBConfig
    from difflab.compare import ReportConfig
    from difflab.stages import STAGES
    from tasks.edits import SECTIONS

    assert list(STAGES) == list(names.PART_B_STAGES) == PartBConfig().stages
    assert [st.name for st in STAGES.values()] == list(names.PART_B_STAGES.values())
    with pytest.raises(ValueError):
        PartBConfig(stages=["denoiser", "judge"])
    present = ("part_b", "denoiser", "time_ddpm", "sample_time_ddpm", "class_ddpm", "sample_class_ddpm",
               "evaluation", "part_a")  # the runs a pipeline makes, in the order the page shows them
    assert [n for n in report_page.STAGE_ORDER if n in present] == list(present)
    assert [n for n in ReportConfig().stage_order if n in present + ("eval",)] == \
        ["denoiser", "time_ddpm", "class_ddpm", "sample_time_ddpm", "sample_class_ddpm", "eval"]
    assert tuple(report_page.PART_A_ORDER) == PART_A_SECTIONS and set(SECTIONS) == set(PART_A_SECTIONS)
