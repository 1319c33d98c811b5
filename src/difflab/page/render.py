"""Rendering: the page as one self-contained HTML string, a pure function of `RunData` (no MLflow here).

Images are inlined as data: URIs, so the page opens from a file, a mail attachment or MLflow's artifact
view. Given several runs, every figure and number is shown side by side, one column per run.
"""

from __future__ import annotations

import fnmatch
import html
import json
import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Callable, Sequence

from difflab import names
from difflab.page.model import PageConfig, PageImage, RunData, StageData
from difflab.page.sections import FACTS_ID, PART_A_ORDER, SECTIONS, STAGE_ORDER, STEPPED_LABEL, Fig, Number, Section
from difflab.page.style import CSS


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
