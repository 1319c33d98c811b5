"""The write-up page (`difflab report`): one self-contained HTML page that walks through a run's results
section by section, a pure function of plain data, so it is tested on hand-made data and renders the
same from any store.

    model     RunData / StageData / PageImage (what the page is drawn from), PageConfig
    sections  PART_A / PART_B: each section's figures and numbers, in the spec's order
    render    render(runs, config) -> the HTML string
    style     the stylesheet
    gather    gather_run(run_id) -> RunData, read back from MLflow through `difflab.tracking`
              (imported on its own: rendering needs no MLflow)
"""

from difflab.page.model import MIME, PageConfig, PageImage, RunData, StageData
from difflab.page.render import render
from difflab.page.sections import (FACTS_ID, PART_A, PART_A_ORDER, PART_B, SECTION_IDS, SECTIONS, STAGE_ORDER,
                                   STEPPED_LABEL, Fig, Number, Section)

__all__ = ["MIME", "PageConfig", "PageImage", "RunData", "StageData", "render", "FACTS_ID", "PART_A",
           "PART_A_ORDER", "PART_B", "SECTION_IDS", "SECTIONS", "STAGE_ORDER", "STEPPED_LABEL", "Fig", "Number",
           "Section"]
