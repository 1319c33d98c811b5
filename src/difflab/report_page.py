"""The write-up: one self-contained HTML page that walks through a run's results section by section.

A pure function of plain data (`RunData`, built from MLflow by `tracking.report_data`): no MLflow
here, so the page is tested on hand-made data and renders the same from any store. Images are
inlined as data: URIs, so the page opens from a file, a mail attachment or MLflow's artifact view.
Given several runs, every figure and number is shown side by side, one column per run.
"""

from __future__ import annotations

import base64
import fnmatch
import html
import io
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field

from difflab import names
from difflab.config import PART_A_SECTIONS

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


# ---------------------------------------------------------------------------------------------
# What the page shows: sections in the spec's order, each with figures and numbers.

P = tuple[tuple[str, str], ...]
"""(param key, how the caption names it)"""

DENOISER_P: P = (("hidden", "D"), ("batch_size", "batch"), ("plan.epochs", "epochs"), ("lr", "Adam lr"),
                 ("sigma", "trained at σ"), ("seed", "seed"))
TIME_P: P = (("hidden", "D"), ("batch_size", "batch"), ("plan.epochs", "epochs"), ("lr", "Adam lr"),
             ("lr_final_factor", "lr decays to ×"), ("num_timesteps", "T"), ("beta1", "β₁"), ("beta2", "β_T"),
             ("seed", "seed"))
CLASS_P: P = TIME_P + (("p_uncond", "p_uncond"), ("guidance", "guidance γ"))
TIME_SAMPLE_P: P = (("gif_frames", "GIF frames"), ("seed", "seed"))
"""The time-conditioned model has no condition, so no guidance: its captions must not name one."""
SAMPLE_P: P = (("guidance", "guidance γ"),) + TIME_SAMPLE_P
PART_A_P: P = (("backend", "backend"), ("model", "model"), ("num_timesteps", "T"), ("seed", "seed"))


@dataclass(frozen=True)
class Fig:
    stage: str
    pattern: str
    """fnmatch pattern over image names in the stage's run."""
    title: str
    what: str
    """A sentence on what the figure shows."""
    params: P = ()
    pixelated: bool = True
    wide: bool = False
    """A long strip (a trajectory, thousands of pixels wide): shown at full size in a scrolling box, so its
    labels keep the size they were drawn at, instead of shrunk to the column's width."""
    framed: bool = False
    """A frame and a grey mat around the image, for images with white edges (an inpainting mask)."""
    optional: bool = False
    """Left out of the page when no run has it (made only in some cases, e.g. 1.4's restoring start)."""


@dataclass(frozen=True)
class Number:
    label: str
    stage: str
    key: str
    kind: str = "float"
    """float, percent, seconds or int."""


@dataclass(frozen=True)
class Section:
    id: str
    number: str
    title: str
    text: str
    figures: tuple[Fig, ...] = ()
    numbers: tuple[Number, ...] = ()
    tables: tuple[str, ...] = ()
    """Names of special tables (see TABLES)."""
    part: str = ""


def _sec(part: str, id: str, number: str, title: str, text: str, figures=(), numbers=(), tables=()) -> Section:
    return Section(id, number, title, text, tuple(figures), tuple(numbers), tuple(tables), part)


def _part_a_p(*extra: tuple[str, str]) -> P:
    return PART_A_P + tuple(extra)


PART_B = (
    _sec("B", "b-denoiser", "B.1", "Single-step denoiser",
         "A UNet learns to map a noisy digit z = x + σε straight back to x with an L2 loss, trained at one noise "
         "level σ. The grid shows the noising process over σ; the denoised test digits show how far one "
         "network call gets after the first and the last snapshot epoch, and the sweep shows how it copes "
         "with noise levels it was not trained on.",
         [Fig("denoiser", names.NOISING_GRID, "Noising process", "The same test digits with z = x + σε at each σ.",
              (("sigma_sweep", "σ"), ("num_show", "digits"), ("seed", "seed"))),
          Fig("denoiser", names.LOSS_CURVE, "Training loss", "L2 loss ‖D(z) − x‖² per optimizer step (log scale).",
              DENOISER_P, pixelated=False),
          Fig("denoiser", names.DENOISED_TEST, "Denoised test digits after the snapshot epochs",
              "Rows: clean, noisy at the training σ, denoised; one panel per snapshot epoch.",
              DENOISER_P + (("plan.snapshot_epochs", "snapshot epochs"),)),
          Fig("denoiser", names.OOD_SIGMA_SWEEP, "Out-of-distribution noise levels",
              "The trained denoiser on noise levels it never saw: pairs of noisy and denoised rows per σ.",
              DENOISER_P + (("sigma_sweep", "σ sweep"),))],
         [Number("final training loss (last epoch mean)", "denoiser", names.FINAL_LOSS),
          Number("training time", "denoiser", names.TRAIN_SECONDS, "seconds")],
         ["sigma_table"]),
    _sec("B", "b-time-ddpm", "B.2", "Time-conditioned DDPM",
         "The UNet now predicts the noise ε in x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε, with t/T fed in through "
         "fully-connected blocks; sampling runs the DDPM update from pure noise for t = T…1.",
         [Fig("time_ddpm", names.LOSS_CURVE, "Training loss", "‖ε_θ(x_t, t) − ε‖² per optimizer step (log scale).",
              TIME_P, pixelated=False),
          Fig("time_ddpm", names.SNAPSHOT_SAMPLES, "Samples after the snapshot epochs",
              "Digits drawn from pure noise with the model as it was after each snapshot epoch.",
              TIME_P + (("plan.snapshot_epochs", "snapshot epochs"),)),
          Fig("sample_time_ddpm", names.FINAL_SAMPLES, "Final samples", "Samples from the finished model.",
              TIME_SAMPLE_P),
          Fig("sample_time_ddpm", names.TRAJECTORY, "Denoising trajectory",
              "Each row follows one sample from noise (left) to digit (right).", TIME_SAMPLE_P, wide=True),
          Fig("sample_time_ddpm", names.GIF_PATTERN, "Denoising, animated", "The whole grid denoising, as a GIF.",
              TIME_SAMPLE_P)],
         [Number("final training loss", "time_ddpm", names.FINAL_LOSS),
          Number("training time", "time_ddpm", names.TRAIN_SECONDS, "seconds")]),
    _sec("B", "b-class-ddpm", "B.3", "Class-conditioned DDPM",
         "The digit enters as a one-hot vector (dropped with probability p_uncond so the same network is also "
         "unconditional); samples use classifier-free guidance ε = ε_u + γ(ε_c − ε_u).",
         [Fig("class_ddpm", names.LOSS_CURVE, "Training loss", "Noise-prediction loss per optimizer step (log scale).",
              CLASS_P, pixelated=False),
          Fig("class_ddpm", names.SNAPSHOT_SAMPLES, "Samples of every digit after the snapshot epochs",
              "One row per requested digit, with classifier-free guidance.",
              CLASS_P + (("samples_per_class", "per digit"), ("plan.snapshot_epochs", "snapshot epochs"))),
          Fig("sample_class_ddpm", names.FINAL_SAMPLES, "Final samples", "Every digit from the finished model.",
              SAMPLE_P),
          Fig("sample_class_ddpm", names.TRAJECTORY, "Denoising trajectory",
              "Rows follow single samples from noise to digit.", SAMPLE_P, wide=True),
          Fig("sample_class_ddpm", names.GIF_PATTERN, "Denoising, animated", "The whole grid denoising, as a GIF.",
              SAMPLE_P)],
         [Number("final training loss", "class_ddpm", names.FINAL_LOSS),
          Number("training time", "class_ddpm", names.TRAIN_SECONDS, "seconds")]),
    _sec("B", "b-evaluation", "B.4", "Evaluation by an independent judge",
         "A small CNN classifier, trained apart from the diffusion models, reads the samples: how often a "
         "class-conditioned sample is the digit that was asked for, and the Fréchet distance between samples "
         "and real held-out digits in the judge's feature space. The floor is the distance between as many "
         "real training digits and the same held-out set: what a perfect generator would score.",
         [Fig("evaluation", names.JUDGED_SAMPLES, "Judged samples",
              "Class-conditioned samples, one row per requested digit, with how many the judge read correctly.",
              (("num_samples", "samples per model"), ("judge.epochs", "judge epochs"), ("judge.width", "judge width")))],
         [Number("judge accuracy on held-out real digits", "evaluation", names.JUDGE_HELDOUT_ACCURACY, "percent"),
          Number("class agreement (sample judged as the requested digit)", "evaluation", names.agreement("class"), "percent"),
          Number("judge's mean confidence in the requested digit", "evaluation", names.confidence("class"), "percent"),
          Number("evaluation time (judge training included)", "evaluation", names.EVAL_SECONDS, "seconds")],
         ["frechet_table", "agreement_table", "digit_share_table"]),
)

PART_A = (
    _sec("A", "a-sample-steps", "A.0", "Sampling at several step counts",
         "Each condition sampled with fewer and more denoising steps, with classifier-free guidance.",
         [Fig("part_a/sample_steps", names.SAMPLE_STEPS + "*", "Samples by number of inference steps",
              "Rows: number of steps; columns: condition.",
              _part_a_p(("num_inference_steps", "steps"), ("prompts", "conditions"), ("guidance", "guidance γ")))]),
    _sec("A", "a-forward", "A.1.1–1.3", "Forward process, Gaussian blur and one-step denoising",
         "A test image noised to x_t = √ᾱ_t x₀ + √(1 − ᾱ_t) ε at three timesteps, then cleaned up by the best "
         "Gaussian blur (a classical filter) and by one call of the diffusion model (x̂₀ from its noise estimate).",
         [Fig("part_a/denoise", names.FORWARD_BLUR_ONE_STEP, "Forward process, blur and one-step",
              "Rows: noisy x_t, best Gaussian blur, one-step estimate; columns: timestep.",
              _part_a_p(("forward_timesteps", "t"), ("blur_sigmas", "blur σ")))]),
    _sec("A", "a-iterative", "A.1.4", "Iterative denoising compared",
         "Starting from the noisy image at strided step i_start, the model denoises step by step along the "
         "strided schedule; the result is compared with one-step denoising and blurring of the same image. "
         "From the spec's i_start = 10 (t = 690 of IF's T = 1000; t = 207 of the MNIST model's T = 300) little "
         "of the original survives the noise, and the model generates rather than restores: it lands on a "
         "plausible image, for MNIST often another digit, so its result can be further from the original (a "
         "higher MSE) than the blurry one-step estimate, which averages over every image the noise could hide. "
         "When that happens, the last figure starts again from the noisiest later i_start at which the "
         "iterative result is at least as close to the original as one-step denoising: from there it restores.",
         [Fig("part_a/denoise", names.ITERATIVE_STEPS, "Iterative denoising, every 5th step",
              "The image along the strided schedule, left to right.", _part_a_p(("i_start", "i_start"),
                                                                                ("t_start", "t_start"))),
          Fig("part_a/denoise", names.DENOISE_COMPARED, "Iterative vs one-step vs blur",
              "The original, its noisy version and the three estimates.", _part_a_p(("i_start", "i_start"),
                                                                                    ("t_start", "t_start"))),
          Fig("part_a/denoise", names.DENOISE_RESTORING, "Where the iterative loop still restores",
              "The same comparison from the noisiest later i_start at which the iterative result is at least "
              "as close to the original as one-step denoising.",
              _part_a_p(("restore_i_start", "i_start"), ("restore_t_start", "t_start")), optional=True)],
         [Number("MSE, iterative", "part_a/denoise", names.MSE_ITERATIVE),
          Number("MSE, one-step", "part_a/denoise", names.MSE_ONE_STEP),
          Number("MSE, best blur", "part_a/denoise", names.MSE_BLUR),
          Number("MSE, iterative, from the i_start where it restores", "part_a/denoise", names.RESTORE_MSE_ITERATIVE),
          Number("MSE, one-step, from the same i_start", "part_a/denoise", names.RESTORE_MSE_ONE_STEP)]),
    _sec("A", "a-sample", "A.1.5", "Sampling from pure noise",
         "i_start = 0: the iterative loop started from pure noise, without guidance.",
         [Fig("part_a/sample", names.SAMPLES_UNGUIDED + "*", "Unguided samples", "Samples from pure noise.",
              _part_a_p(("num_samples", "samples")))]),
    _sec("A", "a-cfg", "A.1.6", "Classifier-free guidance",
         "ε = ε_u + γ(ε_c − ε_u): extrapolating past the conditional estimate trades diversity for quality.",
         [Fig("part_a/cfg", names.SAMPLES_CFG + "*", "Samples with classifier-free guidance", "One row per condition.",
              _part_a_p(("conditions", "conditions"), ("guidance", "γ"), ("num_samples", "per condition")))]),
    _sec("A", "a-sdedit", "A.1.7", "SDEdit: the test image and hand drawings",
         "A real image is noised to strided step i_start and denoised with guidance: small i_start leaves "
         "little of it, large i_start stays close. The same on hand-drawn images.",
         [Fig("part_a/sdedit", names.SDEDIT + "*", "SDEdit", "Rows: the test image, then each user image; columns: i_start.",
              _part_a_p(("i_starts", "i_start"), ("user_images", "user images"), ("guidance", "guidance γ")))]),
    _sec("A", "a-inpaint", "A.1.7.2", "Inpainting",
         "After every step the pixels outside the mask are reset to the original, noised to the current "
         "timestep, so only the masked region gets new content.",
         [Fig("part_a/inpaint", names.INPAINT + "*", "Inpainting", "Original, mask (white = new content), kept pixels, result.",
              _part_a_p(("mask", "mask"), ("guidance", "guidance γ")), framed=True)],
         [Number("largest change outside the mask", "part_a/inpaint", names.UNMASKED_MAX_ABS_CHANGE)]),
    _sec("A", "a-i2i", "A.1.7.3", "Text-conditioned image-to-image",
         "SDEdit guided by a different condition: the test image pulled towards another prompt (digit).",
         [Fig("part_a/i2i", names.IMAGE_TO_IMAGE + "*", "Image-to-image", "Rows: condition; columns: i_start.",
              _part_a_p(("conditions", "conditions"), ("i_starts", "i_start"), ("guidance", "guidance γ")))]),
    _sec("A", "a-anagram", "A.1.8", "Visual anagrams",
         "Two noise estimates, one of the image and one of its transformed view with another condition, are "
         "averaged at every step: the result reads as one thing upright and another when transformed.",
         [Fig("part_a/anagram", names.ANAGRAM_PREFIX + "*", "Visual anagrams", "The image, then its transformed view.",
              _part_a_p(("anagrams", "anagrams"), ("guidance", "guidance γ")))]),
    _sec("A", "a-hybrid", "A.1.9", "Hybrid images",
         "Low frequencies of one condition's noise estimate plus high frequencies of another's: one reading "
         "up close, another from afar (the small version).",
         [Fig("part_a/hybrid", names.hybrid("*", "full"), "Hybrid image, full size", "Seen up close: the high frequencies.",
              _part_a_p(("hybrids", "low / high"), ("kernel_size", "kernel"), ("sigma", "σ"),
                        ("guidance", "guidance γ"))),
          Fig("part_a/hybrid", names.hybrid("*", "small"), "Hybrid image at ¼ size (enlarged)",
              "Seen from afar: the low frequencies.", _part_a_p(("hybrids", "low / high")))]),
)

SECTIONS: tuple[Section, ...] = PART_A + PART_B
"""Part A then Part B, as the write-up orders them; facts come first on the page."""
FACTS_ID = "facts"
SECTION_IDS: tuple[str, ...] = (FACTS_ID,) + tuple(s.id for s in SECTIONS)

STAGE_ORDER = (*names.part_b_run_order(), names.PART_A_RUN)
PART_A_ORDER = PART_A_SECTIONS
STEPPED_LABEL = "epoch"


# ---------------------------------------------------------------------------------------------
# Rendering


def render(runs: Sequence[RunData], config: PageConfig | None = None, title: str | None = None) -> str:
    """The whole page for one run, or several side by side (one column each)."""
    if not runs:
        raise ValueError("no runs to report; give at least one pipeline, part_b or part_a run")
    cfg = config or PageConfig()
    page = _Page(list(runs), cfg)
    heading = title or ("difflab write-up: " + " vs ".join(r.name for r in runs))
    body = [f"<header><h1>{_e(heading)}</h1>{page.subtitle()}</header>", page.toc(), page.facts()]
    parts = {"A": "Part A — sampling and edits with a diffusion model (the run's Part A backend)",
             "B": "Part B — diffusion models trained on MNIST"}
    for part, part_title in parts.items():
        sections = [s for s in SECTIONS if s.part == part]
        body.append(f'<h2 class="part" id="part-{part.lower()}">{_e(part_title)}</h2>')
        if not any(page.has_part(part, r) for r in runs):
            body.append(f'<p class="missing">No run shown here has Part {part}.</p>')
        body += [page.section(s) for s in sections]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>{_e(heading)}</title>"
            f"<style>{CSS}</style></head><body data-runs=\"{len(runs)}\"><main>" + "\n".join(body)
            + "</main></body></html>\n")


@dataclass
class _Page:
    runs: list[RunData]
    cfg: PageConfig
    labels: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        many = len(self.runs) > 1
        self.labels = [(f"{chr(ord('A') + i)}: " if many else "") + f"{r.name} ({r.run_id[:8]})"
                       for i, r in enumerate(self.runs)]

    # -- header, contents, facts

    def subtitle(self) -> str:
        items = []
        for label, r in zip(self.labels, self.runs):
            when = _when(r.start_ms)
            items.append(f"<li>{_link(r.url, label)} — {_e(r.flow or 'run')}, {_e(r.status.lower() or '?')}"
                         f"{', ' + _e(when) if when else ''}</li>")
        return f'<ul class="runs">{"".join(items)}</ul>'

    def toc(self) -> str:
        entries = [f'<li><a href="#{FACTS_ID}">The run</a></li>']
        for part in ("A", "B"):
            entries.append(f'<li><a href="#part-{part.lower()}">Part {part}</a><ol>')
            entries += [f'<li><a href="#{s.id}">{_e(s.number)} {_e(s.title)}</a></li>'
                        for s in SECTIONS if s.part == part]
            entries.append("</ol></li>")
        return f'<nav class="toc"><h2>Contents</h2><ol>{"".join(entries)}</ol></nav>'

    def facts(self) -> str:
        rows = [("run", [_link(r.url, r.name) + f' <code>{_e(r.run_id)}</code>' for r in self.runs]),
                ("flow", [_e(r.flow) for r in self.runs]),
                ("status", [_e(r.status) for r in self.runs]),
                ("started", [_e(_when(r.start_ms)) for r in self.runs]),
                ("wall time", [_e(_secs(r.seconds)) for r in self.runs]),
                ("profile", [_e(_fact(r, "profile")) for r in self.runs]),
                ("device", [_e(_fact(r, "device")) for r in self.runs]),
                ("data source", [_e(_data_fact(r)) for r in self.runs]),
                ("git commit", [f"<code>{_e(_fact(r, 'git_commit'))}</code>" for r in self.runs]),
                ("Part A backend", [_e(_part_a_fact(r, self.cfg)) for r in self.runs]),
                ("tracking store", [f"<code>{_e(r.tracking_uri)}</code>" for r in self.runs])]
        facts = _table(["", *self.labels], [[f"<th>{_e(k)}</th>", *[f"<td>{v or '—'}</td>" for v in vals]]
                                            for k, vals in rows])
        stage_names = [n for n in STAGE_ORDER if any(n in r.stages for r in self.runs)]
        stage_names += [names.part_a_run(s) for s in PART_A_ORDER if any(names.part_a_run(s) in r.stages for r in self.runs)]
        stage_rows = [[f"<th>{_e(n)}</th>", *[f"<td>{self._stage_cell(r.stages.get(n))}</td>" for r in self.runs]]
                      for n in stage_names]
        stages = _table(["stage", *self.labels], stage_rows, cls="stages")
        return (f'<section id="{FACTS_ID}" data-section="{FACTS_ID}"><h2>The run</h2>'
                "<p>What was run, where, on which data and code; then every stage with its wall time, whether it "
                "was reused from an earlier identical run, and a link to its MLflow run (params, metrics, "
                f"artifacts, system metrics).</p>{facts}<h3>Stages</h3>{stages}</section>")

    def _stage_cell(self, st: StageData | None) -> str:
        if st is None:
            return '<span class="missing">not run</span>'
        parts = [_e(_secs(st.seconds))]
        if st.reused_from:
            original = f" (it took {_secs(st.original_seconds)})" if st.original_seconds is not None else ""
            parts.append(f'<span class="reused">reused</span> from {_link(st.reused_from_url, st.reused_from[:8])}'
                         f"{_e(original)}")
        if st.status and st.status != "FINISHED":
            parts.append(f'<span class="bad">{_e(st.status)}</span>')
        parts.append(_link(st.url, "MLflow run"))
        return " · ".join(parts)

    # -- sections

    def has_part(self, part: str, run: RunData) -> bool:
        return any(k == "part_a" or k.startswith("part_a/") for k in run.stages) if part == "A" else \
            any(k in run.stages for k in STAGE_ORDER if k != "part_a")

    def section(self, s: Section) -> str:
        out = [f'<section id="{s.id}" data-section="{s.id}"><h3>{_e(s.number)} {_e(s.title)}</h3>'
               f"<p>{_e(s.text)}</p>"]
        if s.numbers:
            out.append(self.numbers(s.numbers))
        for name in s.tables:
            out.append(TABLES[name](self))
        out += [self.figure(f) for f in s.figures]
        out.append("</section>")
        return "".join(out)

    def numbers(self, numbers: Sequence[Number]) -> str:
        rows = []
        for n in numbers:
            cells = [_fmt(_metric(r, n.stage, n.key), n.kind, self.cfg) for r in self.runs]
            if all(c == "—" for c in cells):
                continue
            rows.append([f"<th>{_e(n.label)}</th>", *[f'<td class="num">{c}</td>' for c in cells]])
        return _table(["", *self.labels], rows, cls="numbers") if rows else ""

    @staticmethod
    def _images(f: Fig, st: StageData | None) -> list[PageImage]:
        images = [im for im in (st.images if st else []) if fnmatch.fnmatchcase(im.name, f.pattern)
                  or fnmatch.fnmatchcase(im.path.rsplit("/", 1)[-1], f.pattern)]
        return sorted(images, key=lambda im: (im.name, im.step if im.step is not None else -1))

    def figure(self, f: Fig) -> str:
        if f.optional and not any(self._images(f, r.stages.get(f.stage)) for r in self.runs):
            return ""
        cells = []
        for label, r in zip(self.labels, self.runs):
            st = r.stages.get(f.stage)
            images = self._images(f, st)
            head = f'<div class="runlabel">{_e(label)}</div>' if len(self.runs) > 1 else ""
            if not images:
                why = "this stage was not run" if st is None else "no such image in this run"
                cells.append(f'<figure class="cell empty">{head}<p class="missing">{why}</p></figure>')
                continue
            pics = "".join(self._img(im, f, len(images) > 1, st) for im in images)
            cells.append(f'<figure class="cell">{head}<div class="pics">{pics}</div>'
                         f"<figcaption>{self.caption(f, r, st)}</figcaption></figure>")
        return (f'<div class="figure" data-figure="{_e(f.stage)}:{_e(f.pattern)}"><h4>{_e(f.title)}</h4>'
                f'<div class="row cols-{len(self.runs)}">{"".join(cells)}</div></div>')

    def _img(self, im: PageImage, f: Fig, labelled: bool, st: StageData | None = None) -> str:
        scale = 1
        if im.width and im.width < self.cfg.min_image_px:
            scale = math.ceil(self.cfg.min_image_px / im.width)
        size = f' width="{im.width * scale}" height="{im.height * scale}"' if im.width and im.height else ""
        classes = (["px"] if f.pixelated or scale > 1 else []) + (["framed"] if f.framed else [])
        style = f' class="{" ".join(classes)}"' if classes else ""
        label = ""
        if labelled:
            label = f"after {STEPPED_LABEL} {im.step}" if im.step is not None else im.name
            label = f'<span class="sub">{_e(label)}</span>'
        alt = im.name + (f" ({STEPPED_LABEL} {im.step})" if im.step is not None else "")
        tag = f'<img src="{im.uri()}" alt="{_e(alt)}"{size}{style}>'
        full = _full_size_url(st, im)
        if full:  # the file itself, at full size, in the MLflow UI's artifact view
            tag = f'<a class="full" href="{_e(full)}" target="_blank" rel="noopener" title="open full size">{tag}</a>'
            label += f'<a class="sub fulllink" href="{_e(full)}" target="_blank" rel="noopener">open full size</a>'
        box = "pic wide" if f.wide else "pic"
        return f'<div class="{box}">{label}{tag}</div>'

    def caption(self, f: Fig, run: RunData, st: StageData) -> str:
        parent = run.stages.get("part_a") if f.stage.startswith("part_a/") else None
        values = []
        for key, label in f.params:
            raw = st.params.get(key)
            if raw is None and parent is not None:
                raw = parent.params.get(key)
            if raw is not None and raw != "None":
                values.append(f"{_e(label)} {_e(_param_value(raw, self.cfg))}")
        made = f"Made by {_link(st.url, st.name)}"
        if st.reused_from:
            made += f" (reused: images from the original run {_link(st.reused_from_url, st.reused_from[:8])})"
        run_with = (": " + ", ".join(values)) if values else ""
        return f"{_e(f.what)} {made}{run_with}."


# ---------------------------------------------------------------------------------------------
# Special tables


def _sigma_table(page: _Page) -> str:
    sigmas = sorted({float(k.split("sigma_", 1)[1]) for r in page.runs for k in
                     r.stages.get("evaluation", StageData(name="", run_id="")).metrics if k.startswith(names.DENOISER_SIGMA_PREFIX)})
    if not sigmas:
        return ""
    many = len(page.runs) > 1
    head = ["σ"] + [f"{lab}: {q}" if many else q for lab in page.labels for q in ("test MSE", "PSNR (dB)")]
    rows = []
    for s in sigmas:
        cells = [f"<th>{s:g}</th>"]
        for r in page.runs:
            for q in ("mse", "psnr"):
                cells.append(f'<td class="num">{_fmt(_metric(r, "evaluation", names.denoiser_at_sigma(q, s)), "float", page.cfg)}</td>')
        rows.append(cells)
    return "<h4>Denoiser on held-out digits at each σ</h4>" + _table(head, rows, cls="numbers")


def _frechet_table(page: _Page) -> str:
    rows = []
    for label, key in (("time-conditioned samples", "time"), ("class-conditioned samples", "class")):
        cells = []
        for r in page.runs:
            fd = _metric(r, "evaluation", names.frechet(key))
            floor = _metric(r, "evaluation", names.frechet_floor(key))
            ratio = f' <span class="ratio">({fd / floor:.1f}× the floor)</span>' if fd is not None and floor else ""
            cells.append(f'<td class="num">{_fmt(fd, "float", page.cfg)}{ratio}</td>')
        rows.append([f"<th>{_e(label)}</th>", *cells])
    floors = []
    for r in page.runs:
        floor = next((v for k in (names.frechet_floor("class"), names.frechet_floor("time"))
                      if (v := _metric(r, "evaluation", k)) is not None), None)
        floors.append(f'<td class="num">{_fmt(floor, "float", page.cfg)}</td>')
    rows.append(["<th>real vs real (the floor)</th>", *floors])
    if all("—" in "".join(r[1:]) for r in rows):
        return ""
    return "<h4>Fréchet distance to real held-out digits (judge features)</h4>" + \
        _table(["", *page.labels], rows, cls="numbers")


def _agreement_table(page: _Page) -> str:
    digits = range(10)
    rows = []
    for label, r in zip(page.labels, page.runs):
        values = [_metric(r, "evaluation", names.agreement_digit("class", d)) for d in digits]
        if all(v is None for v in values):
            continue
        rows.append([f"<th>{_e(label) or 'agreement'}</th>",
                     *[f'<td class="num">{_fmt(v, "percent", page.cfg)}</td>' for v in values]])
    if not rows:
        return ""
    return "<h4>Class agreement per requested digit</h4>" + \
        _table(["digit", *[str(d) for d in digits]], rows, cls="numbers digits")


def _digit_share_table(page: _Page) -> str:
    """How the judge reads the time-conditioned (unconditional) samples: the share of each digit."""
    digits = range(10)
    rows = []
    for label, r in zip(page.labels, page.runs):
        values = [_metric(r, "evaluation", f"time.digit_share.digit_{d}") for d in digits]
        if all(v is None for v in values):
            continue
        rows.append([f"<th>{_e(label) or 'share'}</th>",
                     *[f'<td class="num">{_fmt(v, "percent", page.cfg)}</td>' for v in values]])
    if not rows:
        return ""
    return ("<h4>Time-conditioned samples: the share the judge reads as each digit</h4>"
            "<p>The time-conditioned model is asked for no digit; 10 % each would be a perfect spread, and the "
            "rarest digit's share shows which digits it neglects.</p>"
            + _table(["digit", *[str(d) for d in digits]], rows, cls="numbers digits"))


TABLES: dict[str, Callable[[_Page], str]] = {"sigma_table": _sigma_table, "frechet_table": _frechet_table,
                                              "agreement_table": _agreement_table,
                                              "digit_share_table": _digit_share_table}


# ---------------------------------------------------------------------------------------------
# Small helpers


def _e(text) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def _link(url: str, text: str) -> str:
    return f'<a href="{_e(url)}">{_e(text)}</a>' if url else _e(text)


def _table(head: Sequence[str], rows: Sequence[Sequence[str]], cls: str = "") -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join(f"<tr>{''.join(r)}</tr>" for r in rows)
    return f'<table class="{cls}"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>'


def _full_size_url(st: StageData | None, im: PageImage) -> str:
    """The image's file in the MLflow UI (its artifact view), from the run that made it (the original run of a
    reused stage); "" when the run has no address."""
    base = (st.reused_from_url if st.reused_from else st.url) if st else ""
    if not base or "/runs/" not in base:
        return ""
    head, _, query = base.partition("?")
    return f"{head.rstrip('/')}/artifacts/{im.path}" + (f"?{query}" if query else "")


def _metric(run: RunData, stage: str, key: str) -> float | None:
    st = run.stages.get(stage)
    value = st.metrics.get(key) if st else None
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def _fmt(value: float | None, kind: str, cfg: PageConfig) -> str:
    if value is None:
        return "—"
    if kind == "percent":
        return f"{100 * value:.1f} %"
    if kind == "seconds":
        return _secs(value)
    if kind == "int":
        return f"{int(value):,}"
    return f"{value:.{cfg.float_digits}g}"


def _secs(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 60:
        return f"{seconds:.1f} s"
    m, s = divmod(round(seconds), 60)
    return f"{m} min {s:02d} s" if m < 60 else f"{m // 60} h {m % 60:02d} min"


def _when(ms: int | None) -> str:
    if not ms:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _fact(run: RunData, tag: str) -> str:
    """A tag of the run itself, else of its part_b/part_a parent, else of any stage."""
    for source in [run.tags, *(run.stages[k].tags for k in ("part_b", "part_a") if k in run.stages),
                   *(s.tags for s in run.stages.values())]:
        if source.get(tag):
            return source[tag]
    return ""


def _data_fact(run: RunData) -> str:
    params = {**(run.stages["part_b"].params if "part_b" in run.stages else {}), **run.params}
    source = params.get("data.source_used") or _fact(run, "data_source")
    if not source:
        return ""
    sizes = ""
    if params.get("data.n_train"):
        sizes = f", {int(params['data.n_train']):,} training / {int(params.get('data.n_test', 0)):,} held-out images"
    checksum = params.get("data.checksum") or _fact(run, "data_checksum")
    return f"{source}{sizes}" + (f", checksum {checksum[:12]}" if checksum else "")


def _part_a_fact(run: RunData, cfg: PageConfig) -> str:
    a = run.stages.get("part_a")
    if a is None:
        return ""
    model = a.params.get("model.resolved", "")
    return a.params.get("backend", "") + (f", model {_param_value(model, cfg)}" if model else "")


def _param_value(raw: str, cfg: PageConfig) -> str:
    """JSON lists/dicts as plain comma lists, file paths as their last two parts, long values cut."""
    try:
        value = json.loads(raw)
    except (ValueError, TypeError):
        value = raw
    text = _plain(value)
    if len(text) > cfg.max_value_chars:
        text = text[: cfg.max_value_chars - 1] + "…"
    return text


def _plain(value) -> str:
    if isinstance(value, list):
        return ", ".join(_plain(v) for v in value)
    if isinstance(value, dict):
        if {"low", "high"} <= set(value):
            return f"{value['low']} / {value['high']}"
        if {"first", "second"} <= set(value):
            return f"{value['first']} / {value['second']} ({value.get('view', '')})"
        return ", ".join(f"{k} {_plain(v)}" for k, v in value.items())
    if isinstance(value, str) and "/" in value and not value.startswith("http"):
        return "/".join(value.rstrip("/").split("/")[-2:])
    return str(value)


CSS = """
:root { --fg:#1d2330; --muted:#667085; --line:#d9dde5; --accent:#2957a4; --bg:#fff; --soft:#f5f7fa; }
* { box-sizing: border-box; }
body { margin:0; background:var(--bg); color:var(--fg);
       font: 15px/1.55 -apple-system, "Segoe UI", "DejaVu Sans", Roboto, Helvetica, Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 28px 32px 80px; }
header h1 { font-size: 28px; margin: 0 0 6px; letter-spacing: -0.01em; }
ul.runs { margin: 0 0 18px; padding-left: 18px; color: var(--muted); }
h2 { font-size: 22px; margin: 38px 0 10px; padding-bottom: 6px; border-bottom: 2px solid var(--fg); }
h2.part { margin-top: 56px; }
h3 { font-size: 18px; margin: 34px 0 6px; color: var(--accent); }
h4 { font-size: 15px; margin: 20px 0 8px; }
p { max-width: 880px; }
a { color: var(--accent); }
code { font-size: 12.5px; background: var(--soft); padding: 1px 4px; border-radius: 3px; }
nav.toc { background: var(--soft); border: 1px solid var(--line); border-radius: 6px; padding: 6px 22px 12px; }
nav.toc h2 { border: 0; font-size: 16px; margin: 10px 0 4px; }
nav.toc ol { margin: 2px 0; padding-left: 20px; } nav.toc > ol { columns: 2; column-gap: 40px; }
nav.toc > ol > li { break-inside: avoid; margin-bottom: 6px; }
table { border-collapse: collapse; margin: 8px 0 16px; font-size: 14px; }
th, td { border-bottom: 1px solid var(--line); padding: 5px 12px; text-align: left; vertical-align: top; }
thead th { background: var(--soft); font-weight: 600; }
tbody th { font-weight: 500; color: var(--muted); }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.digits td { min-width: 56px; }
.ratio { color: var(--muted); font-size: 12.5px; }
.reused { background: #fff3cd; color: #7a5a00; padding: 0 6px; border-radius: 3px; font-size: 12.5px; }
.bad { background: #fde2e1; color: #9b1c1c; padding: 0 6px; border-radius: 3px; }
.missing { color: var(--muted); font-style: italic; }
.figure { margin: 14px 0 24px; }
.row { display: grid; gap: 18px; align-items: start; }
.row.cols-1 { grid-template-columns: 1fr; } .row.cols-2 { grid-template-columns: 1fr 1fr; }
.row.cols-3 { grid-template-columns: 1fr 1fr 1fr; }
figure.cell { margin: 0; padding: 10px 12px; border: 1px solid var(--line); border-radius: 6px; background: #fff; }
.runlabel { font-weight: 600; font-size: 13px; margin-bottom: 6px; color: var(--accent); }
.pics { display: flex; flex-wrap: wrap; gap: 12px; align-items: flex-end; }
.pic { display: flex; flex-direction: column; align-items: flex-start; max-width: 100%; }
.pic .sub { font-size: 12.5px; color: var(--muted); margin-bottom: 2px; }
.pic img { max-width: 100%; height: auto; display: block; }
.pic.wide { max-width: 100%; overflow-x: auto; padding-bottom: 4px; }
.pic.wide img { max-width: none; }
img.px { image-rendering: pixelated; }
img.framed { border: 1px solid #475467; background: #98a2b3; padding: 6px; }
.pic a.full { display: block; cursor: zoom-in; }
.pic .fulllink { margin-top: 2px; order: 2; }
figcaption { font-size: 13px; color: var(--muted); margin-top: 8px; }
"""
