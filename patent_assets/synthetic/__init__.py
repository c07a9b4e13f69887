"""Synthetic weekly USPTO "grant full text with embedded images" releases, made offline.

Demo and test data, not a pipeline step: no Dagster asset calls it. `patentflow synthesize`
writes it, `patentflow run` lands it only into an empty landing directory (the embedded
default), and the tests and benchmarks build their small releases with it. The pipeline then
reads it as it reads USPTO's files: releases in the real product's layout, so that every later
step (fetch, XML parse, TIFF decode, FIG-label OCR, alignment, training) runs on it unchanged.

    I20240102.tar
      I20240102/UTIL0000/US11856001-20240102.ZIP
        US11856001-20240102/US11856001-20240102.XML        us-patent-grant, DTD v4.5
        US11856001-20240102/US11856001-20240102-D00001.TIF 1-bit, CCITT G4, 300 dpi
      I20240102/DESIGN/USD1010001-20240102.ZIP

Each patent draws one procedurally built 3-D object (a bracket, a wheel, a lamp, ...) from
several views, so the same object appears on several sheets (retrieval learns "same patent"),
and the object's class drives the title, classification and description words (captioning
can learn that the picture matters). Classes have a long-tailed frequency. Everything is a
pure function of the seed: the same seed gives the same bytes.

Generation is split in two: `plan_release` decides everything (cheap: texts, figures, which
FIG labels go on which sheet, the ground truth) and `write_release` renders and packs it.
The modules, each importing only those above it:

    config      SyntheticConfig (the size knobs), DPI
    geometry    solids, rotations, box/cylinder/prism/extrude, Part
    objects     the object classes: their builders, words and frequencies
    plans       views, FigurePlan/SheetPlan/PatentPlan/ReleasePlan, plan_patent, plan_release
    render      a sheet's pixels (render_sheet) and its G4 TIFF bytes
    grant_xml   the us-patent-grant XML, and plain_text of its mini markup
    releases    packing (per-patent ZIPs in the weekly tar), ground_truth, generate*
"""

from __future__ import annotations

from patent_assets.synthetic.config import SyntheticConfig
from patent_assets.synthetic.grant_xml import plain_text
from patent_assets.synthetic.plans import FigurePlan, PatentPlan, ReleasePlan, SheetPlan, plan_release
from patent_assets.synthetic.releases import (
    generate,
    generate_default,
    generate_releases,
    ground_truth,
    write_release,
)
from patent_assets.synthetic.render import render_sheet

__all__ = [
    "FigurePlan",
    "PatentPlan",
    "ReleasePlan",
    "SheetPlan",
    "SyntheticConfig",
    "generate",
    "generate_default",
    "generate_releases",
    "ground_truth",
    "plain_text",
    "plan_release",
    "render_sheet",
    "write_release",
]
