"""Packing: per-patent ZIPs inside the weekly tar, with fixed timestamps (same seed, same bytes).

Also the entry points that plan, render and write whole releases, and their ground truth.
"""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from collections.abc import Sequence
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

from patent_assets.records import atomic_write
from patent_assets.synthetic.config import SyntheticConfig
from patent_assets.synthetic.grant_xml import build_xml, plain_text
from patent_assets.synthetic.plans import PatentPlan, ReleasePlan, plan_release
from patent_assets.synthetic.render import render_sheet, tiff_bytes


def patent_zip(patent: PatentPlan, config: SyntheticConfig) -> bytes:
    images = {sheet.num: render_sheet(patent, sheet, config) for sheet in patent.sheets}
    stamp = (patent.grant_date.year, patent.grant_date.month, patent.grant_date.day, 0, 0, 0)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:

        def add(name: str, data: bytes, compress: int) -> None:
            info = zipfile.ZipInfo(f"{patent.stem}/{name}", date_time=stamp)
            info.compress_type = compress
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)

        add(
            f"{patent.stem}.XML",
            build_xml(patent, {num: image.size for num, image in images.items()}),
            zipfile.ZIP_DEFLATED,
        )
        for sheet in patent.sheets:
            add(
                patent.sheet_file(sheet), tiff_bytes(images[sheet.num]), zipfile.ZIP_STORED
            )  # G4 is compressed already
    return buffer.getvalue()


def member_path(release: ReleasePlan, patent: PatentPlan, index: int) -> str:
    folder = "DESIGN" if patent.application_type == "design" else f"UTIL{index // 1000:04d}"
    return f"{release.name}/{folder}/{patent.stem}.ZIP"


def write_release(release: ReleasePlan, out_dir: Path, config: SyntheticConfig) -> Path:
    """Render and pack one release as `<out_dir>/I<yyyymmdd>.tar`, atomically."""
    target = Path(out_dir) / f"{release.name}.tar"
    mtime = datetime.combine(release.release_date, time(0, 0), tzinfo=UTC).timestamp()
    ordered = sorted(release.patents, key=lambda p: (p.application_type == "design", p.doc_number))
    with (
        atomic_write(target, "wb") as handle,
        tarfile.open(fileobj=handle, mode="w", format=tarfile.GNU_FORMAT) as tar,
    ):
        utility_index = 0
        for patent in ordered:
            data = patent_zip(patent, config)
            info = tarfile.TarInfo(member_path(release, patent, utility_index))
            utility_index += patent.application_type != "design"
            info.size, info.mtime, info.mode = len(data), int(mtime), 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(data))
    return target


def ground_truth(releases: Sequence[ReleasePlan]) -> dict[str, Any]:
    """Which FIG labels are printed on which sheet, in shared/realdata's sheet_figure_labels.json shape."""
    patents = []
    for release in releases:
        for patent in release.patents:
            patents.append(
                {
                    "release": release.name,
                    "patent_dir": patent.stem,
                    "publication": patent.patent_id,
                    "title": patent.title,
                    "object_class": patent.object_class.name,
                    "number_of_drawing_sheets": len(patent.sheets),
                    "number_of_figures": len(patent.figures),
                    "description_of_drawings": [plain_text(text) for text in patent.brief_paragraphs],
                    "sheets": [
                        {
                            "sheet": f"D{sheet.num:05d}",
                            "file": f"{patent.stem}/{patent.sheet_file(sheet)}",
                            "landscape": sheet.landscape,
                            "figures_on_sheet": [figure.key for figure in sheet.figures if figure.key],
                            "printed_labels": [figure.label for figure in sheet.figures if figure.label],
                            "views": [figure.view for figure in sheet.figures],
                        }
                        for sheet in patent.sheets
                    ],
                }
            )
    return {
        "_note": "Synthetic releases (patent_assets.synthetic): the exact FIG labels printed per sheet.",
        "patents": patents,
    }


def generate(config: SyntheticConfig, out_dir: Path, truth_path: Path | None = None) -> list[Path]:
    """Write every release of `config` into `out_dir`; optionally the ground truth as JSON."""
    plans = [plan_release(config, index) for index in range(config.releases)]
    paths = [write_release(plan, out_dir, config) for plan in plans]
    if truth_path is not None:
        with atomic_write(Path(truth_path)) as handle:
            json.dump(ground_truth(plans), handle, indent=1)
    return paths


def generate_releases(
    out_dir: Path,
    seed: int = 0,
    releases: int = 3,
    patents_per_release: int = 8,
    start: date = date(2024, 1, 2),
) -> list[Path]:
    """One weekly product per release, a week apart from `start`; returns the tar paths."""
    config = SyntheticConfig(
        releases=releases, patents_per_release=patents_per_release, start=start, seed=seed
    )
    return generate(config, out_dir)


def generate_default(out_dir: Path) -> list[Path]:
    """The project's default data: the default `SyntheticConfig`."""
    return generate(SyntheticConfig(), out_dir)
