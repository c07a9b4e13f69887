"""The prior-art search page and the JSON API it uses, over one loaded `SearchIndex` (FastAPI).

    GET  /                                  the page (a Jinja2 template, plain JS and CSS: no build, no CDN)
    POST /api/search                        multipart: one or more `image` files or a `text`; `before`,
                                            `classification`, `k` -> {"hits": [...]}
    GET  /api/figures/{image_id}/image      the figure as PNG (`?max_side=N`: a thumbnail)
    GET  /api/patents/{patent_id}/figures   every indexed figure of a patent
    GET  /api/index                         what the index holds, and the page's limits

The search itself is the library's (`training.retrieval.search_index`); this module turns requests
into its calls and its `ValueError`s into 4xx answers that say why. Uploads are bounded by the
request body limit (413), then decoded by `patent_assets.images.load_sheet` within the index's image
limits (not an image, a decompression bomb: 400).
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from PIL import Image
from starlette.exceptions import HTTPException as StarletteHTTPException

from patent_assets.classifications import class_prefix
from patent_assets.images import ImageRejected, load_sheet
from training.retrieval.faiss_index import FigureMeta, Hit
from training.retrieval.search_index import SearchIndex

HERE = Path(__file__).parent
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Settings:
    """The page's limits: what one request may carry and ask for."""

    max_upload_bytes: int = 20 * 1024 * 1024  # the whole request: every view and the form fields
    max_views: int = 8  # drawings in one query
    max_k: int = 200
    thumbnail_sides: tuple[int, int] = (64, 2048)  # the `max_side` a figure image may be asked at


def create_app(index: SearchIndex, settings: Settings | None = None) -> FastAPI:
    """The app over an index loaded once (`SearchIndex.load(...).warm()`)."""
    settings = settings or Settings()
    # No /docs or /redoc: their pages load scripts from a CDN, and the page works offline.
    app = FastAPI(title="PatentFlow prior-art search", docs_url=None, redoc_url=None)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")
    templates = Jinja2Templates(directory=HERE / "templates")
    _add_error_handlers(app, settings)

    @app.get("/", response_class=HTMLResponse)
    def page(request: Request) -> Response:
        return templates.TemplateResponse(request, "search.html", {"index": _summary(index, settings)})

    @app.get("/api/index")
    def index_summary() -> dict[str, Any]:
        return _summary(index, settings)

    @app.post(
        "/api/search",
        max_body_size=settings.max_upload_bytes,
        form_limits={"max_files": settings.max_views, "max_fields": 16},
    )
    def search(
        image: Annotated[
            list[UploadFile] | None, File(description="Drawings: several views are one query.")
        ] = None,
        text: Annotated[str | None, Form(description="A text, instead of drawings.")] = None,
        before: Annotated[str | None, Form(description="Granted before this date (YYYY-MM-DD).")] = None,
        classification: Annotated[
            str | None, Form(description="LOCARNO:14, LOCARNO:1403 or 14-03, CPC:A61C, USPC:D14.")
        ] = None,
        k: Annotated[int, Form(description="How many figures.")] = 10,
    ) -> dict[str, Any]:
        uploads = [upload for upload in image or [] if upload.filename or upload.size]
        text = (text or "").strip() or None
        if bool(uploads) == (text is not None):
            raise HTTPException(400, "give one or more drawings (image) or a text, not both and not neither")
        if not 1 <= k <= settings.max_k:
            raise HTTPException(400, f"k: {k} is out of range (1 to {settings.max_k})")
        filters = {"k": k, "before": _date(before), "classification": _classification(classification)}
        try:
            if uploads:
                hits = index.search_images(_decoded(index, uploads), **filters)
            else:
                hits = index.search_text(text or "", **filters)
        except ValueError as error:
            raise HTTPException(400, str(error)) from error
        return {"hits": [_hit_json(hit) for hit in hits]}

    @app.get("/api/figures/{image_id:path}/image", response_class=Response)
    def figure_image(
        image_id: str,
        max_side: Annotated[int | None, Query(description="Scale the longer side down to this.")] = None,
    ) -> Response:
        figure = _figure(index, image_id)
        lowest, highest = settings.thumbnail_sides
        if max_side is not None and not lowest <= max_side <= highest:
            raise HTTPException(400, f"max_side: {max_side} is out of range ({lowest} to {highest})")
        return _png(figure, max_side)

    @app.get("/api/patents/{patent_id}/figures")
    def patent_figures(patent_id: str) -> dict[str, Any]:
        figures = index.patent_figures(patent_id)
        if not figures:
            raise HTTPException(404, f"no patent {patent_id!r} in this index")
        first = figures[0]
        return {
            "patent_id": patent_id,
            "title": first.title,
            "grant_date": first.grant_date,
            "classifications": first.classes,
            "figures": [_figure_json(figure) for figure in figures],
        }

    return app


def serve(app: FastAPI, host: str = "127.0.0.1", port: int = 8000) -> None:
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="info")


# ---- requests in ---------------------------------------------------------------------------------


def _date(before: str | None) -> str | None:
    if before is None or not before.strip():
        return None
    try:
        return date.fromisoformat(before.strip()).isoformat()
    except ValueError:
        raise HTTPException(400, f"before: {before!r} is not a date (YYYY-MM-DD)") from None


def _classification(text: str | None) -> str | None:
    try:
        return class_prefix(text)
    except ValueError as error:
        raise HTTPException(400, str(error)) from error


def _decoded(index: SearchIndex, uploads: list[UploadFile]) -> list[Image.Image]:
    """Each uploaded view decoded within the index's image limits; the first bad one is a 400
    naming the file. The upload goes through a temporary file, as load_sheet reads a path."""
    images = []
    with tempfile.TemporaryDirectory(prefix="patentflow-query-") as folder:
        for position, upload in enumerate(uploads, start=1):
            name = upload.filename or f"view {position}"
            path = Path(folder) / f"view-{position}"
            with open(path, "wb") as handle:
                while chunk := upload.file.read(1024 * 1024):
                    handle.write(chunk)
            try:
                images.append(index.read_image(path))
            except ImageRejected as rejected:
                raise HTTPException(400, f"{name}: {rejected.reason}") from None
    return images


def _figure(index: SearchIndex, image_id: str) -> FigureMeta:
    # The id only ever keys the index's own metadata; a path in it is refused all the same, so
    # that a probe gets a clear answer.
    if any(part in image_id for part in ("/", "\\", "..")) or image_id.startswith("."):
        raise HTTPException(400, f"{image_id!r} is a path, not an image id")
    figure = index.figure(image_id)
    if figure is None:
        raise HTTPException(404, f"no figure {image_id!r} in this index")
    return figure


# ---- answers out ---------------------------------------------------------------------------------


def _image_url(figure_id: str) -> str:
    return f"/api/figures/{quote(figure_id, safe='')}/image"


def _hit_json(hit: Hit) -> dict[str, Any]:
    return {
        "rank": hit.rank,
        "score": round(hit.score, 6),
        "image_id": hit.figure_id,
        "patent_id": hit.patent_id,
        "title": hit.title,
        "grant_date": hit.grant_date,
        "classifications": hit.classes,
        "figure_labels": hit.figure_labels,
        "brief_description": hit.brief_description,
        "generated_description": hit.generated_description,
        "image_url": _image_url(hit.figure_id),
    }


def _figure_json(figure: FigureMeta) -> dict[str, Any]:
    return {
        "image_id": figure.figure_id,
        "figure_labels": figure.figure_labels,
        "brief_description": figure.brief_description,
        "generated_description": figure.generated_description,
        "image_url": _image_url(figure.figure_id),
    }


def _png(figure: FigureMeta, max_side: int | None) -> Response:
    """The figure's image as PNG: the ingested PNG as it is, or decoded (within limits) and scaled."""
    path = Path(figure.image_path)
    headers = {"Cache-Control": "private, max-age=3600"}
    try:
        if max_side is None and path.is_file():
            with open(path, "rb") as handle:
                if handle.read(len(PNG_SIGNATURE)) == PNG_SIGNATURE:
                    return FileResponse(path, media_type="image/png", headers=headers)
        image = load_sheet(path)
    except ImageRejected as rejected:
        raise HTTPException(
            404, f"figure {figure.figure_id}: its image cannot be read ({rejected.reason})"
        ) from None
    if image.mode not in ("1", "L"):
        image = image.convert("L")
    if max_side is not None and max(image.size) > max_side:
        image = image.convert("L")  # grey levels keep thin 1-bit strokes visible when shrunk
        image.thumbnail((max_side, max_side), Image.Resampling.BOX)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return Response(buffer.getvalue(), media_type="image/png", headers=headers)


def _summary(index: SearchIndex, settings: Settings) -> dict[str, Any]:
    manifest = index.manifest
    return {
        "figures": manifest["counts"]["figures"],
        "patents": manifest["counts"]["patents"],
        "grant_dates": manifest.get("grant_dates"),
        "kind": manifest.get("kind"),
        "encoder": manifest.get("encoder", {}).get("source"),
        "generated_descriptions": (manifest.get("generated_descriptions") or {}).get("figures", 0),
        "max_upload_bytes": settings.max_upload_bytes,
        "max_views": settings.max_views,
        "max_k": settings.max_k,
    }


def _add_error_handlers(app: FastAPI, settings: Settings) -> None:
    """Every refusal is {"detail": "the reason"}, so the page can show it as it is."""

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        reasons = [
            f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}" for e in error.errors()
        ]
        return JSONResponse({"detail": "; ".join(reasons)}, status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail
        if error.status_code == 413:
            megabytes = settings.max_upload_bytes / (1024 * 1024)
            detail = f"the upload is over the limit of {megabytes:g} MB (patentflow serve --max-upload-mb)"
        return JSONResponse({"detail": detail}, status_code=error.status_code, headers=error.headers)
