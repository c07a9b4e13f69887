"""`patentflow`: each pipeline step for people and scripts.

patentflow run                         the main job: the whole asset graph on the embedded default
patentflow ingest SOURCE... --out DIR  the data steps on any path, without Dagster
patentflow synthesize --out DIR        write the synthetic weekly releases
patentflow ui                          the Dagster UI on 127.0.0.1
patentflow restore PATH --commit C     bring back the exact data of a past materialization
patentflow describe IMAGE...           a description of each drawing (default model: the champion)
patentflow index FIGURES.jsonl --out DIR   a search index over ingested figures (champion encoder)
patentflow search (--image P... | --text T | --queries F)   prior-art search of an index (default: the pipeline's)
patentflow serve                       the prior-art search page on 127.0.0.1:8000
"""

from __future__ import annotations

import json
import os
import signal
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from patent_assets.layout import Home

if TYPE_CHECKING:
    from training.retrieval.faiss_index import Hit
    from training.retrieval.search_index import Query, SearchIndex

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)


def _home() -> Home:
    home = Home.from_env()
    os.environ["PATENTFLOW_HOME"] = str(home.root)
    os.environ.setdefault("DAGSTER_HOME", str(home.dagster))
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    if (
        Path(os.environ["DAGSTER_HOME"]) == home.dagster
    ):  # ours: local SQLite, or PostgreSQL by the environment
        from orchestration import instance

        try:
            instance.configure(home.dagster)
        except ValueError as error:
            typer.echo(f"patentflow: {error}", err=True)
            raise typer.Exit(2) from error
    return home


@app.command()
def synthesize(
    out: Annotated[Path, typer.Option(help="Directory for the release files.")],
    releases: Annotated[int, typer.Option(help="Number of weekly releases.")] = 3,
    patents: Annotated[int, typer.Option(help="Patents per release.")] = 8,
    seed: int = 0,
) -> None:
    """Write deterministic synthetic weekly releases in the real USPTO layout."""
    from patent_assets import synthetic

    config = synthetic.SyntheticConfig(releases=releases, patents_per_release=patents, seed=seed)
    for path in synthetic.generate(config, out):
        typer.echo(path)


@app.command()
def ingest(
    sources: Annotated[list[Path], typer.Argument(help="Release files or directories, or PatentDesc JSON.")],
    out: Annotated[Path, typer.Option(help="Writes OUT/figures.jsonl and OUT/rejected.jsonl.")],
    workers: Annotated[int, typer.Option(help="OCR processes.")] = os.cpu_count() or 1,
) -> None:
    """Parse, convert, OCR and align: figures.jsonl (one record per figure) and rejected.jsonl."""
    from patent_assets import pipeline

    missing = [str(s) for s in sources if not s.exists()]
    if missing:
        raise typer.BadParameter(f"not found: {', '.join(missing)}", param_hint="SOURCE")
    summary = pipeline.ingest(sources, out, cache_dir=_home().ocr_cache, workers=workers)
    typer.echo(json.dumps(summary.as_dict(), indent=2))
    typer.echo(
        f"{summary.figures} figures -> {out / pipeline.FIGURES}; "
        f"{len(summary.rejected)} rejected -> {out / pipeline.REJECTED}"
    )


@app.command()
def run(
    releases: Annotated[
        int, typer.Option(help="Synthetic releases to put in the landing directory when it is empty.")
    ] = 3,
    patents: Annotated[int, typer.Option(help="Patents per synthetic release.")] = 8,
    seed: int = 0,
    train: Annotated[bool, typer.Option(help="Also train, evaluate and promote PatentLMM.")] = True,
    real_sample: Annotated[
        bool,
        typer.Option(
            help="With the synthetic releases, also land the shipped real USPTO files: 16 design "
            "grants with their 102 sheets, and a weekly full-text file of 25 grants (text only)."
        ),
    ] = True,
) -> None:
    """The main job: materialize the whole asset graph on the embedded default."""
    from orchestration import runner

    home = _home()
    report = runner.run_all(
        home,
        synthetic_releases=releases,
        patents_per_release=patents,
        seed=seed,
        echo=typer.echo,
        train=train,
        real_release=real_sample,
    )
    typer.echo(report.render())
    if not report.success:
        raise typer.Exit(1)


@app.command()
def describe(
    images: Annotated[list[Path] | None, typer.Argument(help="PNG or TIFF images.")] = None,
    model: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION or a model directory.")
    ] = ("models:/patentlmm@champion"),
    kind: Annotated[str, typer.Option(help="brief or detailed.")] = "brief",
    split: Annotated[
        Path | None, typer.Option(help="Batch mode: a llava_json/{kind}_{split}.json file.")
    ] = None,
    figures: Annotated[
        Path | None, typer.Option(help="Batch mode: figures.jsonl with the image paths.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option(help="Batch mode: where to write {image_id: text} JSON.")
    ] = None,
    max_new_tokens: int = 128,
) -> None:
    """Describe patent drawings with PatentLMM (default: the registry's champion): JSON lines
    {"image", "description"}; or, with --split, PatentLMM's batch output {image_id: text}."""
    from training import tracking
    from training.describe import inference
    from training.describe import pyfunc as describe_model

    if kind not in ("brief", "detailed"):
        raise typer.BadParameter("brief or detailed", param_hint="--kind")
    if not images and split is None:
        raise typer.BadParameter("give IMAGE... or --split (with --out)")
    home = _home()
    try:
        model_dir = tracking.download_model(
            model, dst=home.store / "models" / "describe", tracking_uri=tracking.tracking_uri(home)
        )
        loaded = describe_model.load(Path(model_dir)).inference  # the registry's MLflow model, or a directory
    except (LookupError, FileNotFoundError, ValueError, tracking.TrackingUnavailable) as exc:
        typer.echo(f"patentflow describe: cannot load model {model}: {exc}", err=True)
        raise typer.Exit(2) from exc
    if split is not None:
        if out is None:
            raise typer.BadParameter("batch mode writes a file: give --out", param_hint="--out")
        run = inference.describe_split(split, figures, loaded, kind, out, max_new_tokens=max_new_tokens)  # type: ignore[arg-type]
        typer.echo(f"{len(run.descriptions)} descriptions -> {out}; {len(run.rejected)} left out")
        return
    for row in inference.describe_images(images or [], loaded, kind, max_new_tokens):  # type: ignore[arg-type]
        typer.echo(
            json.dumps({k: str(v) if isinstance(v, Path) else v for k, v in row.items()}, ensure_ascii=False)
        )


@app.command()
def ui(port: int = 3000) -> None:
    """Start the Dagster UI (webserver + daemon) on 127.0.0.1."""
    home = _home()
    # Started from a script, `dagster dev` ignores SIGINT/SIGTERM it inherited as ignored:
    # restore the defaults so Ctrl-C and `kill -INT` stop it with all its processes.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    typer.echo(f"Dagster UI: http://127.0.0.1:{port}  (DAGSTER_HOME={home.dagster})")
    dagster = Path(sys.executable).with_name("dagster")
    os.execv(
        str(dagster),
        [str(dagster), "dev", "-h", "127.0.0.1", "-p", str(port), "-m", "orchestration.definitions"],
    )


@app.command()
def restore(
    path: Annotated[
        str,
        typer.Argument(
            help="A versioned path under $PATENTFLOW_HOME/data, e.g. releases/2024-01-02/figures."
        ),
    ],
    commit: Annotated[str | None, typer.Option(help="The dvc_commit of the materialization.")] = None,
    md5: Annotated[str | None, typer.Option(help="The dvc_md5 of the materialization.")] = None,
    out: Annotated[Path | None, typer.Option(help="Where to put it (default: in place).")] = None,
) -> None:
    """Bring back the exact data of a past materialization from the DVC remote."""
    from patent_assets import versioning

    if not commit and not md5:
        raise typer.BadParameter("give --commit or --md5 (both are in the materialization's metadata)")
    home = _home()
    repo = versioning.DataRepo(home.data, remote_url=str(home.dvc_remote))
    repo.open_or_init()
    typer.echo(repo.restore(path, commit=commit, md5=md5, dest=out))


@app.command()
def index(
    figures: Annotated[Path, typer.Argument(help="A figures.jsonl that `patentflow ingest` wrote.")],
    out: Annotated[Path, typer.Option(help="The index directory to write.")],
    encoder: Annotated[
        str, typer.Option(help="models:/NAME@ALIAS, models:/NAME/VERSION or an encoder directory.")
    ] = "models:/patent-figure-encoder@champion",
    kind: Annotated[str, typer.Option(help="flat (exact), ivf, hnsw or ivfpq.")] = "flat",
    refine: Annotated[
        int,
        typer.Option(
            help="With --kind ivfpq: re-score N x k PQ candidates with the exact vectors (kept "
            "beside the codes). 0: PQ scores as they are."
        ),
    ] = 0,
    text_encoder: Annotated[
        Path | None, typer.Option(help="A sentence-transformers model directory (default: MiniLM).")
    ] = None,
    thumbnail_weight: Annotated[
        float,
        typer.Option(
            help="Fuse each image embedding with its ink thumbnail: image search scores "
            "(1 - W) x encoder cosine + W x thumbnail cosine. 0: the encoder alone (the "
            "default: fusion no longer helps the pretrained encoder)."
        ),
    ] = 0.0,
    thumbnail_size: Annotated[
        int, typer.Option(help="Thumbnail side in pixels, with --thumbnail-weight above 0.")
    ] = 32,
    generated_descriptions: Annotated[
        Path | None,
        typer.Option(
            help="PatentLMM's {image_id: text} JSON (the pipeline's "
            "data/generated_descriptions/generated_descriptions.json): search hits show it."
        ),
    ] = None,
) -> None:
    """Embed every figure with the encoder (default: the registry's champion) and write a FAISS
    search index: images, their text-space projections, and the patents' title + abstract."""
    from training import pyfunc, tracking
    from training.retrieval import pyfunc as encoder_model
    from training.retrieval import search_index
    from training.retrieval.faiss_index import IndexOptions

    if kind not in ("flat", "ivf", "hnsw", "ivfpq"):
        raise typer.BadParameter("flat, ivf, hnsw or ivfpq", param_hint="--kind")
    if refine < 0:
        raise typer.BadParameter(f"must be 0 (off) or a factor of k, got {refine}", param_hint="--refine")
    if refine and kind != "ivfpq":
        raise typer.BadParameter(f"only with --kind ivfpq, not {kind}", param_hint="--refine")
    if not 0.0 <= thumbnail_weight < 1.0:
        raise typer.BadParameter(
            f"must be in [0, 1), got {thumbnail_weight}", param_hint="--thumbnail-weight"
        )
    if thumbnail_size < 32:
        raise typer.BadParameter(f"must be at least 32, got {thumbnail_size}", param_hint="--thumbnail-size")
    if not figures.is_file():
        raise typer.BadParameter(f"{figures}: not found", param_hint="FIGURES")
    if generated_descriptions is not None and not generated_descriptions.is_file():
        raise typer.BadParameter(
            f"{generated_descriptions}: not found", param_hint="--generated-descriptions"
        )
    home = _home()
    try:
        downloaded = tracking.download_model(
            encoder, dst=home.store / "models" / "index-encoder", tracking_uri=tracking.tracking_uri(home)
        )
        loaded = encoder_model.load(downloaded)  # the registry's MLflow model, or a directory
    except (LookupError, FileNotFoundError, ValueError, tracking.TrackingUnavailable) as exc:
        typer.echo(
            f"patentflow index: cannot load encoder {encoder}: {exc} "
            "(train one with `patentflow run`, or pass --encoder DIR)",
            err=True,
        )
        raise typer.Exit(2) from exc
    options = search_index.BuildOptions(
        kind=kind,  # type: ignore[arg-type]
        index_options=IndexOptions(refine=refine),
        text_encoder_dir=text_encoder,
        encoder_source=encoder,
        progress=True,
        thumbnail_weight=thumbnail_weight,
        thumbnail_size=thumbnail_size,
        # the frozen backbone's features, keyed by its weights and preprocessing: the pipeline's
        # runs and earlier indexes have usually computed them already
        feature_cache=home.feature_cache,
        generated_descriptions=generated_descriptions,
    )
    encoder_dir = pyfunc.artifact_dir(downloaded)  # copied into the index beside the vectors
    built = search_index.build_search_index(figures, encoder_dir, out, options, encoder=loaded.encoder)
    counts = built.manifest["counts"]
    typer.echo(
        f"{counts['figures']} figures of {counts['patents']} patents -> {out} ({kind}); "
        f"{counts['rejected']} rejected -> {out / search_index.REJECTED}"
    )
    for key, what in (
        ("same_patent", "same-patent retrieval over this collection"),
        ("same_patent_encoder", "  the encoder alone"),
        ("same_patent_thumbnails", "  the thumbnails alone (pixel matching)"),
    ):
        same_patent = built.evaluation.get(key, {})
        if same_patent.get("queries"):
            typer.echo(
                f"{what}: "
                + ", ".join(f"{name} {same_patent[name]:.3f}" for name in ("mAP", "Rank-1", "Rank-5"))
                + f" ({int(same_patent['queries'])} queries)"
            )


@app.command()
def search(
    image: Annotated[
        list[Path] | None,
        typer.Option(
            help="A drawing (PNG/TIFF) to find figures like; repeat for several views of one design."
        ),
    ] = None,
    text: Annotated[str | None, typer.Option(help="A text to find figures (or patents) for.")] = None,
    queries: Annotated[
        Path | None,
        typer.Option(
            help="Many queries in one run: a JSON-lines file, one {id, image | images | text, before, "
            "classification, k} a line (image paths relative to the file); one JSON line per hit out, "
            "with its query_id. --before, --classification and --k fill what a line leaves out."
        ),
    ] = None,
    index_dir: Annotated[
        Path | None, typer.Option("--index", help="An index directory (default: the pipeline's).")
    ] = None,
    before: Annotated[
        str | None, typer.Option(help="Prior art only: figures granted before YYYY-MM-DD.")
    ] = None,
    classification: Annotated[
        str | None,
        typer.Option(
            help="Only figures of this class: LOCARNO:14, LOCARNO:1403 (or 14-03), CPC:A61C, USPC:D14."
        ),
    ] = None,
    k: Annotated[int, typer.Option(help="How many results.")] = 10,
    patents: Annotated[bool, typer.Option(help="With --text: search patents' title + abstract.")] = False,
    rerank: Annotated[
        bool,
        typer.Option(
            help="With one --image: k-reciprocal re-ranking (k1 10, k2 3); scores become distances, lower is better."
        ),
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Search an index by drawings (several views of one design are one query) or text; results
    ranked with figure id, patent id, grant date, score and description."""
    from training.retrieval import search_index
    from training.retrieval.faiss_index import IndexFileError

    if sum(given is not None for given in (image, text, queries)) != 1:
        raise typer.BadParameter("give exactly one of --image, --text and --queries")
    if queries is not None and (patents or rerank):
        raise typer.BadParameter("--patents and --rerank are not for a --queries run")
    missing = [str(path) for path in image or [] if not path.is_file()]
    if missing:
        raise typer.BadParameter(f"{', '.join(missing)}: not found", param_hint="--image")
    try:
        one = search_index.Query(
            images=tuple(image or ()),
            text=text if queries is None else "",  # a --queries run: its lines are the queries
            before=before,
            classification=classification,
            k=k,
            patents=patents,
            rerank=rerank,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    if queries is not None:
        if not queries.is_file():
            raise typer.BadParameter(f"{queries}: not found", param_hint="--queries")
        try:
            batch = search_index.read_queries(queries, k=k, before=before, classification=classification)
        except ValueError as exc:  # a bad line: named by file and line, before any query runs
            typer.echo(f"patentflow search: {exc}", err=True)
            raise typer.Exit(2) from exc
    home = _home()
    try:
        loaded = search_index.SearchIndex.load(index_dir or home.search_index)
        if queries is not None:
            raise typer.Exit(_search_many(loaded, batch))
        hits = loaded.run(one)
    except (IndexFileError, ValueError) as exc:
        typer.echo(f"patentflow search: {exc}", err=True)
        raise typer.Exit(2) from exc
    _print_hits(hits, as_json, before)


def _search_many(loaded: SearchIndex, queries: list[Query]) -> int:
    """Every query of a --queries file, one JSON line per hit; a query that fails is reported on
    stderr and the others still run. The exit status: 1 if any failed."""
    from dataclasses import asdict

    failed = 0
    for query in queries:
        try:
            hits = loaded.run(query)
        except ValueError as exc:
            failed += 1
            typer.echo(f"patentflow search: query {query.id}: {exc}", err=True)
            continue
        for hit in hits:
            typer.echo(json.dumps({"query_id": query.id, **asdict(hit)}, ensure_ascii=False))
    return 1 if failed else 0


def _print_hits(hits: list[Hit], as_json: bool, before: str | None) -> None:
    from dataclasses import asdict

    for hit in hits:
        if as_json:
            typer.echo(json.dumps(asdict(hit), ensure_ascii=False))
        else:
            typer.echo(
                f"{hit.rank:>3}  {hit.score:7.4f}  {hit.grant_date}  {hit.patent_id:<15} "
                f"{hit.figure_id:<22} {hit.description[:90]}"
            )
    if not hits and not as_json:
        typer.echo("no results" + (f" granted before {before}" if before else ""))


@app.command()
def serve(
    index_dir: Annotated[
        Path | None, typer.Option("--index", help="An index directory (default: the pipeline's).")
    ] = None,
    host: Annotated[
        str, typer.Option(help="Interface to listen on (default: this machine only).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    max_upload_mb: Annotated[
        float, typer.Option(help="Largest request the page accepts (all drawings of a query together).")
    ] = 20.0,
) -> None:
    """The prior-art search page: upload drawings or type a text, filter by date and class, look
    at the figures, export the list. The index and its encoders are loaded once, at start."""
    from patentflow.web import app as web
    from training.retrieval import search_index
    from training.retrieval.faiss_index import IndexFileError

    if max_upload_mb <= 0:
        raise typer.BadParameter(f"must be above 0, got {max_upload_mb}", param_hint="--max-upload-mb")
    directory = index_dir or _home().search_index
    try:
        loaded = search_index.SearchIndex.load(directory).warm()
    except (IndexFileError, FileNotFoundError, ValueError) as exc:
        typer.echo(f"patentflow serve: {exc}", err=True)
        raise typer.Exit(2) from exc
    settings = web.Settings(max_upload_bytes=int(max_upload_mb * 1024 * 1024))
    typer.echo(
        f"Prior-art search: http://{host}:{port}  ({len(loaded.figures.figures)} figures from {directory})"
    )
    web.serve(web.create_app(loaded, settings), host=host, port=port)


if __name__ == "__main__":
    app()
