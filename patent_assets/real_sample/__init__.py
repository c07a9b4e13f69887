"""Real USPTO grants shipped with the code: the embedded default's one real release.

`design_grants_2021/` holds 16 US design grants of 2021 (`us-patent-grant`, DTD v4.5), one
folder per grant with its XML and every drawing sheet (TIFF), unmodified; `PROVENANCE.md` says
where they come from and `SHA256SUMS` pins every byte. `land` puts them in a landing directory
as one directory release, which the ordinary ingestion reads like any other (parse, sheets,
OCR, alignment): they carry no `<?patentflow synthetic?>` mark, so their records are real.

`ipg_text_2013/ipg130416.small.xml` is real full text with no drawings (the first 25 documents of
the weekly `ipg130416` product); `land_text` zips it as `ipg130416.zip`, the product's shape, so
that it ingests as a text-only release: real patent text for the language model and tokenizer.
"""

from __future__ import annotations

import os
import shutil
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
DESIGN_GRANTS_2021 = HERE / "design_grants_2021"
WEEKLY_TEXT_2013 = HERE / "ipg_text_2013" / "ipg130416.small.xml"
WEEKLY_TEXT_NAME = "ipg130416.zip"  # the USPTO's name for that week's full-text product
SHA256SUMS = HERE / "SHA256SUMS"
PROVENANCE = HERE / "PROVENANCE.md"
# The release's directory name in a landing directory, hence its release key (partition).
RELEASE_NAME = "uspto-design-grants-2021"


def files(root: Path = DESIGN_GRANTS_2021) -> list[Path]:
    """Every file of the sample, relative to `root`, in a stable order."""
    return sorted(path.relative_to(root) for path in root.rglob("*") if path.is_file())


def land(landing_dir: Path, name: str = RELEASE_NAME, source: Path = DESIGN_GRANTS_2021) -> Path:
    """Copy the sample into `landing_dir/name` as a directory release; return its path.

    Written under a hidden name and renamed, so the landing directory never lists half a
    release; an existing `name` is kept as it is. Only the bytes are copied, not the
    permissions, so a read-only install still lands a release that can be deleted.
    """
    landing_dir = Path(landing_dir)
    target = landing_dir / name
    if target.exists():
        return target
    tmp = landing_dir / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for relative in files(source):
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source / relative, tmp / relative)
    os.replace(tmp, target)
    return target


def land_text(landing_dir: Path, name: str = WEEKLY_TEXT_NAME, source: Path = WEEKLY_TEXT_2013) -> Path:
    """Zip the real weekly full text into `landing_dir/name` (the XML unchanged, as the zip's one
    member, as the USPTO ships it); return its path. An existing `name` is kept as it is."""
    landing_dir = Path(landing_dir)
    target = landing_dir / name
    if target.exists():
        return target
    landing_dir.mkdir(parents=True, exist_ok=True)
    tmp = landing_dir / f".{name}.tmp"
    with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(source, source.name)
    os.replace(tmp, target)
    return target
