"""What the Dagster UI shows for each materialization: counts, rejections, a sample, the DVC hash."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import dagster as dg
from PIL import Image

from patent_assets.dataset import BuiltDataset
from patent_assets.pipeline import REJECTED, StepResult
from patent_assets.records import FigureRecord
from patent_assets.versioning import DataVersion


def step_metadata(result: StepResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {k: dg.MetadataValue.int(v) for k, v in result.counts.items()}
    for key, value in result.extra.items():
        if isinstance(value, float):
            metadata[key] = dg.MetadataValue.float(round(value, 4))
        elif isinstance(value, dict) and value:
            metadata[key] = dg.MetadataValue.json(value)
    if result.rejected:
        metadata["rejected_by_reason"] = dg.MetadataValue.json(result.rejected_by_reason())
        metadata["rejected_sample"] = dg.MetadataValue.md(
            "\n".join(f"- `{r.item}`: {r.reason}" for r in result.rejected[:10])
        )
    # True when the step found its output already made from these exact inputs (no work done)
    metadata["reused"] = dg.MetadataValue.bool(bool(result.extra.get("reused")))
    metadata["path"] = dg.MetadataValue.path(str(result.out_dir))
    metadata["rejected_file"] = dg.MetadataValue.path(str(result.out_dir / REJECTED))
    return metadata


def version_metadata(version: DataVersion) -> dict[str, Any]:
    """dvc_md5, dvc_commit, dvc_remote...: what `patentflow restore` needs to bring the data back."""
    return version.metadata()


def sample_figure_markdown(records: list[FigureRecord], max_side: int = 320) -> dg.MetadataValue:
    """The first figure as an inline thumbnail with its labels and description."""
    if not records:
        return dg.MetadataValue.md("_no figures_")
    record = records[0]
    with Image.open(Path(record.image_path)) as image:
        image.thumbnail((max_side, max_side))
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="PNG")
    data = base64.b64encode(buffer.getvalue()).decode()
    return dg.MetadataValue.md(
        f"**{record.image_id}** ({', '.join(record.figure_labels)})\n\n"
        f"![{record.image_id}](data:image/png;base64,{data})\n\n"
        f"{record.brief_description}"
    )


def dataset_metadata(built: BuiltDataset) -> dict[str, Any]:
    return {
        "figures": dg.MetadataValue.int(built.figures),
        "patents": dg.MetadataValue.int(built.patents),
        **{f"split_{name}": dg.MetadataValue.int(n) for name, n in built.split_counts.items()},
        "releases_used": dg.MetadataValue.json(built.releases_used),
        "releases_not_validated": dg.MetadataValue.json(built.releases_skipped),
        "duplicates_rejected": dg.MetadataValue.int(built.duplicates),
        "path": dg.MetadataValue.path(str(built.out_dir)),
    }
