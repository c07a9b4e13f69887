"""The data library of PatentFlow: USPTO sources, parsing, images, OCR, alignment,
validation, splits and formats. Importable and usable without Dagster."""
