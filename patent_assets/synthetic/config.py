"""The size knobs of the synthetic releases, and the resolution their sheets declare."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

DPI = 300  # what the TIFFs and the XML's sheet sizes (mm) declare; the pixels are sheet_width/height


@dataclass(frozen=True)
class SyntheticConfig:
    """Size knobs. The default is small enough to OCR every sheet in minutes on 2 cores."""

    releases: int = 3
    patents_per_release: int = 8
    start: date = date(2024, 1, 2)  # a Tuesday: USPTO publishes grants on Tuesdays
    seed: int = 0
    sheet_width: int = 1000  # pixels of a portrait sheet; real sheets are 2550x3300 at 300 dpi
    sheet_height: int = 1400
    max_sheets_per_patent: int = 5
    design_share: float = 0.4  # share of design (S1) grants; the rest are utility (B2/B1)
    landscape_share: float = 0.2  # share of utility sheets drawn landscape
    two_figure_share: float = 0.4  # share of utility sheets holding two FIGs

    def __post_init__(self) -> None:
        if self.releases < 0 or self.patents_per_release < 1:
            raise ValueError(f"releases must be >= 0 and patents_per_release >= 1, got {self}")
        if self.sheet_width < 300 or self.sheet_height < 300:
            raise ValueError(
                f"sheets must be at least 300x300 px, got {self.sheet_width}x{self.sheet_height}"
            )
        if self.max_sheets_per_patent < 1:
            raise ValueError(f"max_sheets_per_patent must be >= 1, got {self.max_sheets_per_patent}")
