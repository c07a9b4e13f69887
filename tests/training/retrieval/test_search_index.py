"""`patentflow index` / `patentflow search` and the library under them, on synthetic sheets."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import date
from pathlib import Path

import pytest
from typer.testing import CliRunner

from patent_assets import synthetic
from patent_assets.records import read_jsonl, write_jsonl
from patentflow.cli import app
from training.retrieval import search_index
from training.retrieval.faiss_index import IndexFileError
from training.retrieval.model import build_encoder, preset, save_encoder


def _cpc(symbol: tuple[str, str, str, str, str]) -> str:
    """The stored form uspto_xml writes: CPC:F16M 13/02."""
    section, klass, subclass, group, subgroup = symbol
    return f"CPC:{section}{klass}{subclass} {group}/{subgroup}"


@pytest.fixture(scope="module")
def collection(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two weekly releases of synthetic patents as figure records, plus an untrained encoder."""
    root = tmp_path_factory.mktemp("collection")
    config = synthetic.SyntheticConfig(releases=2, patents_per_release=4, seed=3)
    rows = []
    for index in range(config.releases):
        for patent in synthetic.plan_release(config, index).patents:
            for sheet in patent.sheets:
                path = root / "images" / f"{patent.stem}-D{sheet.num:05d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                synthetic.render_sheet(patent, sheet, config).save(path)
                rows.append(
                    {
                        "image_id": f"{patent.patent_id}__{sheet.num}",
                        "patent_id": patent.patent_id,
                        "image_path": str(path),
                        "grant_date": patent.grant_date.isoformat(),
                        "classifications": [
                            f"LOCARNO:{patent.object_class.locarno}",
                            _cpc(patent.object_class.cpc),
                        ],
                        "figure_labels": [f"FIG. {sheet.num}"],
                        "title": patent.title,
                        "abstract": patent.abstract,
                        "brief_description": f"FIG. {sheet.num} is a view of the {patent.object_class.name}.",
                    }
                )
    bad = [
        {**rows[0], "image_id": "USX__missing", "image_path": str(root / "nowhere.png")},
        {**rows[0], "image_id": "USX__undated", "grant_date": ""},
    ]
    figures = root / "figures.jsonl"
    write_jsonl(figures, rows + bad)
    encoder = save_encoder(build_encoder(preset("tiny"), seed=0), root / "encoder")
    index = root / "index"
    search_index.build_search_index(figures, encoder, index)
    return {"root": root, "figures": figures, "encoder": encoder, "index": index}


def test_build_writes_every_part_and_rejects_bad_rows_by_name(collection: dict[str, Path]) -> None:
    index = collection["index"]
    manifest = json.loads((index / search_index.MANIFEST).read_text())
    rows = list(read_jsonl(collection["figures"]))
    assert manifest["counts"]["figures"] == len(rows) - 2
    assert manifest["counts"]["patents"] == len({r["patent_id"] for r in rows[:-2]})
    rejected = {r["item"]: r["reason"] for r in read_jsonl(index / search_index.REJECTED)}
    assert set(rejected) == {"USX__missing", "USX__undated"}
    assert "nowhere.png" in rejected["USX__missing"] and "date" in rejected["USX__undated"]
    for part in (search_index.ENCODER, search_index.FIGURES, search_index.ALIGNED, search_index.PATENTS):
        assert (index / part).is_dir()
    assert manifest["evaluation"]["same_patent"]["queries"] > 0
    assert not [p for p in index.parent.iterdir() if p.name.startswith(".index.")]  # no staging left


def test_image_query_finds_itself_and_the_filter_keeps_only_prior_art(collection: dict[str, Path]) -> None:
    loaded = search_index.SearchIndex.load(collection["index"])
    newest = loaded.figures.figures[-1]
    hits = loaded.search_image(Path(newest.image_path), k=3)
    assert hits[0].figure_id == newest.figure_id and hits[0].score == pytest.approx(1.0, abs=1e-4)
    prior = loaded.search_image(Path(newest.image_path), k=50, before=newest.grant_date)
    assert prior and all(
        date.fromisoformat(h.grant_date) < date.fromisoformat(newest.grant_date) for h in prior
    )
    oldest = loaded.figures.figures[0].grant_date
    assert loaded.search_image(Path(newest.image_path), k=5, before=oldest) == []


def test_patent_text_search_ranks_the_matching_title_first(collection: dict[str, Path]) -> None:
    loaded = search_index.SearchIndex.load(collection["index"])
    target = loaded.patents.figures[0]
    hits = loaded.search_patents(target.description, k=3)
    assert hits[0].patent_id == target.patent_id
    figures = loaded.search_text("a drawing of a mechanical part", k=4)
    assert len(figures) == 4 and len({h.figure_id for h in figures}) == 4
    with pytest.raises(ValueError, match="empty"):
        loaded.search_text("   ")


def test_cli_index_then_search_json(
    collection: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATENTFLOW_HOME", str(tmp_path / "home"))
    runner = CliRunner()
    out = tmp_path / "cli-index"
    built = runner.invoke(
        app,
        [
            "index",
            str(collection["figures"]),
            "--out",
            str(out),
            "--encoder",
            str(collection["encoder"]),
            "--thumbnail-weight",
            "0.5",  # the fused index reports each part alone too
        ],
    )
    assert built.exit_code == 0, built.output
    assert "2 rejected" in built.output and "same-patent retrieval" in built.output
    assert "the encoder alone" in built.output and "the thumbnails alone" in built.output
    loaded = search_index.SearchIndex.load(out)
    query = loaded.figures.figures[-1]
    result = runner.invoke(
        app,
        [
            "search",
            "--image",
            query.image_path,
            "--index",
            str(out),
            "--k",
            "3",
            "--before",
            query.grant_date,
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines() if line.startswith("{")]
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    assert all(h["grant_date"] < query.grant_date for h in hits)
    assert {"figure_id", "patent_id", "grant_date", "score", "description"} <= set(hits[0])
    text = runner.invoke(app, ["search", "--text", "vehicle wheel", "--patents", "--index", str(out)])
    assert text.exit_code == 0 and text.output.count("\n") == min(10, len(loaded.patents.figures))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--image", "x.png", "--text", "wheel"], "exactly one"),
        (["--text", "wheel", "--before", "2024-13-01"], "not a date"),
        (["--image", "missing.png"], "not found"),
        (["--text", "wheel", "--index", "nowhere"], "not a search index"),
        (["--text", "wheel", "--rerank"], "image queries"),
    ],
)
def test_cli_search_bad_input_is_a_clear_error(
    args: list[str], message: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATENTFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["search", *args])
    assert result.exit_code == 2
    assert message in result.output


def test_cli_index_without_a_champion_says_how_to_get_one(
    collection: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATENTFLOW_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["index", str(collection["figures"]), "--out", str(tmp_path / "i")])
    assert result.exit_code == 2
    assert "cannot load encoder" in result.output and "patentflow run" in result.output
    assert not (tmp_path / "i").exists()


def test_loading_a_damaged_index_names_the_file(collection: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "damaged"
    shutil.copytree(collection["index"], copy)
    (copy / search_index.FIGURES / "index.faiss").write_bytes(b"not faiss")
    with pytest.raises(IndexFileError, match=r"index\.faiss"):
        search_index.SearchIndex.load(copy)


def test_thumbnail_fusion_scores_the_weighted_sum_of_both_cosines(collection: dict[str, Path]) -> None:
    import numpy as np

    from training.retrieval.model import embed_images, fuse_with_thumbnails, ink_thumbnails, load_encoder

    images = [row["image_path"] for row in list(read_jsonl(collection["figures"]))[:2]]
    embeddings = embed_images(load_encoder(collection["encoder"]), images).retrieval
    thumbnails, failed = ink_thumbnails(images, 32)
    assert not failed and thumbnails.shape == (2, 32 * 32)
    fused = fuse_with_thumbnails(embeddings, thumbnails, 0.3)
    expected = 0.7 * embeddings[0] @ embeddings[1] + 0.3 * thumbnails[0] @ thumbnails[1]
    assert fused[0] @ fused[1] == pytest.approx(expected, abs=1e-5)
    assert np.linalg.norm(fused, axis=1) == pytest.approx([1.0, 1.0], abs=1e-5)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        fuse_with_thumbnails(embeddings, thumbnails, 1.0)


def test_the_default_index_is_fused_and_a_blank_sheet_does_not_stop_it(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    from PIL import Image

    blank = tmp_path / "blank.png"
    Image.new("L", (400, 500), 255).save(blank)
    rows = list(read_jsonl(collection["figures"]))[:-2]
    figures = tmp_path / "figures.jsonl"
    write_jsonl(figures, [*rows, {**rows[0], "image_id": "USX__blank", "image_path": str(blank)}])
    out = tmp_path / "fused"
    built = search_index.build_search_index(
        figures, collection["encoder"], out, search_index.BuildOptions(thumbnail_weight=0.5)
    )
    assert built.manifest["figure_vectors"] == {
        "dim": 128 + 32 * 32,
        "thumbnail_weight": 0.5,
        "thumbnail_size": search_index.DEFAULT_THUMBNAIL_SIZE,
    }
    assert built.manifest["counts"]["figures"] == len(rows) + 1
    evaluation = built.evaluation
    # The blank sheet is in the index and queries the fused vectors, but has no thumbnail to match.
    assert evaluation["same_patent"]["queries"] == evaluation["same_patent_encoder"]["queries"]
    assert evaluation["same_patent_thumbnails"]["queries"] == evaluation["same_patent"]["queries"] - 1
    loaded = search_index.SearchIndex.load(out)
    query = loaded.figures.figures[3]
    hits = loaded.search_image(Path(query.image_path), k=3)
    assert hits[0].figure_id == query.figure_id and hits[0].score == pytest.approx(1.0, abs=1e-4)


def test_the_cli_and_the_pipeline_default_to_the_library_fusion() -> None:
    import inspect

    from orchestration.resources import RetrievalSettings
    from patentflow.cli import index

    options = inspect.signature(index).parameters
    assert options["thumbnail_weight"].default == search_index.DEFAULT_THUMBNAIL_WEIGHT
    assert options["thumbnail_size"].default == search_index.DEFAULT_THUMBNAIL_SIZE
    settings = RetrievalSettings()
    assert settings.index_thumbnail_weight == search_index.DEFAULT_THUMBNAIL_WEIGHT
    assert settings.index_thumbnail_size == search_index.DEFAULT_THUMBNAIL_SIZE


def test_the_build_evaluates_a_sample_of_queries_on_large_collections(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    built = search_index.build_search_index(
        collection["figures"],
        collection["encoder"],
        tmp_path / "sampled",
        search_index.BuildOptions(thumbnail_weight=0.0, evaluation_queries=5),
    )
    assert built.evaluation["same_patent"]["queries"] == 5
    assert built.manifest["figure_vectors"] == {"dim": 128, "thumbnail_weight": 0.0, "thumbnail_size": 0}
    with pytest.raises(ValueError, match="at least 1"):
        search_index.BuildOptions(evaluation_queries=0)


def test_an_index_from_before_fusion_still_searches(collection: dict[str, Path], tmp_path: Path) -> None:
    copy = tmp_path / "older"
    search_index.build_search_index(
        collection["figures"], collection["encoder"], copy, search_index.BuildOptions(thumbnail_weight=0.0)
    )
    manifest = json.loads((copy / search_index.MANIFEST).read_text())
    del manifest["figure_vectors"]
    (copy / search_index.MANIFEST).write_text(json.dumps(manifest))
    loaded = search_index.SearchIndex.load(copy)
    query = loaded.figures.figures[0]
    assert loaded.search_image(Path(query.image_path), k=1)[0].figure_id == query.figure_id


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--thumbnail-weight", "1.5"], "[0, 1)"),
        (["--thumbnail-weight", "0.5", "--thumbnail-size", "8"], "at least 32"),
        (["--refine", "4"], "only with --kind ivfpq"),
        (["--kind", "ivfpq", "--refine", "-1"], "must be 0 (off)"),
    ],
)
def test_cli_index_bad_options_are_refused(
    args: list[str],
    message: str,
    collection: dict[str, Path],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATENTFLOW_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(
        app, ["index", str(collection["figures"]), "--out", str(tmp_path / "i"), *args]
    )
    assert result.exit_code == 2 and message in result.output
    assert not (tmp_path / "i").exists()


def test_an_index_built_from_the_feature_cache_equals_one_built_from_pixels(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    """The pipeline's index reads the backbone features that training and the gate cached."""
    plain = search_index.build_search_index(collection["figures"], collection["encoder"], tmp_path / "plain")
    cache = tmp_path / "features"
    cached = search_index.build_search_index(
        collection["figures"],
        collection["encoder"],
        tmp_path / "cached",
        search_index.BuildOptions(feature_cache=cache),
    )
    assert any(cache.rglob("*.npy"))
    assert cached.manifest["counts"] == plain.manifest["counts"]
    same_patent = cached.evaluation["same_patent"]["mAP"]
    assert same_patent == pytest.approx(plain.evaluation["same_patent"]["mAP"], abs=0.02)
    first = search_index.SearchIndex.load(tmp_path / "cached").figures.figures[0]
    hits = search_index.SearchIndex.load(tmp_path / "cached").search_image(Path(first.image_path), k=1)
    assert hits[0].figure_id == first.figure_id


def test_the_search_index_job_builds_reports_a_sample_query_and_refuses_an_unknown_kind(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    from training import entry

    out = tmp_path / "index"
    config = tmp_path / "search_index.json"
    fields = {"figures_jsonl": str(collection["figures"]), "encoder_dir": str(collection["encoder"])}
    config.write_text(json.dumps({**fields, "out_dir": str(out), "thumbnail_weight": 0.25}))

    reported = entry.run("search_index", config)
    loaded = search_index.SearchIndex.load(out)
    newest = loaded.figures.figures[-1]
    assert (reported["figures"], reported["rejected"]) == (len(loaded.figures.figures), 2)
    assert loaded.manifest["figure_vectors"]["thumbnail_weight"] == 0.25
    assert reported["sample_query"].startswith(f"Query: {newest.figure_id} ({newest.patent_id}")
    assert (
        "prior art only" in reported["sample_query"] and 0.0 < reported["collection_same_patent_mAP"] <= 1.0
    )

    config.write_text(json.dumps({**fields, "out_dir": str(tmp_path / "other"), "kind": "annoy"}))
    with pytest.raises(ValueError, match=r"kind='annoy' is not a"):
        entry.run("search_index", config)
    assert not (tmp_path / "other").exists()


# ---- several views, the class filter, a file of queries, PatentLMM's descriptions ----------------


def test_several_views_are_one_query_scored_by_each_figure_s_best_view(collection: dict[str, Path]) -> None:
    loaded = search_index.SearchIndex.load(collection["index"])
    first, second = loaded.figures.figures[0], loaded.figures.figures[-1]
    views = [Path(first.image_path), Path(second.image_path)]
    fused = loaded.search_images(views, k=6)
    per_view = [loaded.search_image(view, k=6) for view in views]
    best: dict[str, float] = {}
    for hits in per_view:
        for hit in hits:
            best[hit.figure_id] = max(best.get(hit.figure_id, -2.0), hit.score)
    expected = sorted(best.items(), key=lambda item: -item[1])[:6]
    assert [(h.figure_id, h.score) for h in fused] == [(f, pytest.approx(s)) for f, s in expected]
    assert {first.figure_id, second.figure_id} <= {h.figure_id for h in fused[:2]}  # each view finds itself
    assert [h.rank for h in fused] == list(range(1, 7))
    with pytest.raises(ValueError, match="one drawing"):
        loaded.search_images(views, k=3, rerank=search_index.KReciprocalConfig())


def test_the_class_filter_takes_a_person_s_spelling_and_keeps_only_that_class(
    collection: dict[str, Path],
) -> None:
    loaded = search_index.SearchIndex.load(collection["index"])
    query = Path(loaded.figures.figures[0].image_path)
    containers = [f for f in loaded.figures.figures if any(c.startswith("CPC:B65D") for c in f.classes)]
    hits = loaded.search_image(query, k=50, classification="b65d")
    assert {h.figure_id for h in hits} == {f.figure_id for f in containers}  # exact: all of them, no other
    assert loaded.search_text("a wheel", k=50, classification="12-10")
    assert all(
        "LOCARNO:1210" in h.classes for h in loaded.search_text("a wheel", k=50, classification="12-10")
    )
    assert loaded.search_patents("bracket", k=5, classification="LOCARNO:08")[0].patent_id.startswith("US")
    with pytest.raises(ValueError, match="a Locarno class is 2 digits"):
        loaded.search_image(query, classification="LOCARNO:1")


def _queries_file(collection: dict[str, Path], folder: Path, lines: list[object]) -> Path:
    path = folder / "queries.jsonl"
    path.write_text("\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n")
    return path


def test_cli_runs_a_file_of_queries_and_prints_each_hit_with_its_query_id(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    loaded = search_index.SearchIndex.load(collection["index"])
    newest = loaded.figures.figures[-1]
    image = Path(newest.image_path)
    (tmp_path / "views").mkdir()
    (tmp_path / "views" / "front.png").write_bytes(image.read_bytes())  # a path relative to the file
    queries = _queries_file(
        collection,
        tmp_path,
        [
            {"id": "one", "image": "views/front.png", "k": 3},
            {
                "id": 2,
                "images": [str(image), str(loaded.figures.figures[0].image_path)],
                "before": newest.grant_date,
            },
            {"id": "text", "text": "a wheel", "classification": "CPC:B60B", "k": 50},
            {"id": "defaults", "text": "a lamp"},
        ],
    )
    result = CliRunner().invoke(
        app, ["search", "--queries", str(queries), "--index", str(collection["index"]), "--k", "4"]
    )
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines()]
    by_query: dict[str, list[dict]] = {}
    for hit in hits:
        by_query.setdefault(hit["query_id"], []).append(hit)
    assert by_query["one"][0]["figure_id"] == newest.figure_id and len(by_query["one"]) == 3
    assert by_query["2"] and all(h["grant_date"] < newest.grant_date for h in by_query["2"])
    wheels = [f for f in loaded.figures.figures if any(c.startswith("CPC:B60B") for c in f.classes)]
    assert {h["figure_id"] for h in by_query["text"]} == {f.figure_id for f in wheels}
    assert len(by_query["defaults"]) == 4  # --k fills what a line leaves out
    assert {"query_id", "figure_id", "score", "classes", "figure_labels", "generated_description"} <= set(
        hits[0]
    )


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ({"id": "a", "image": "x.png", "text": "wheel"}, "exactly one of image, images and text"),
        ({"image": "x.png"}, "missing id"),
        ({"id": "a", "text": "wheel", "befor": "2020-01-01"}, "unknown field(s) befor"),
        ({"id": "a", "text": "wheel", "before": "2020-13-01"}, "not a date"),
        ({"id": "a", "text": "wheel", "classification": "LOCARNO:1"}, "2 digits"),
        ({"id": "a", "text": "wheel", "k": "ten"}, "not a whole number"),
        ("{not json", "queries.jsonl:2"),
    ],
)
def test_cli_refuses_a_bad_queries_file_by_its_line_before_running_any(
    line: object, message: str, collection: dict[str, Path], tmp_path: Path
) -> None:
    queries = _queries_file(collection, tmp_path, [{"id": "ok", "text": "wheel"}, line])
    result = CliRunner().invoke(
        app, ["search", "--queries", str(queries), "--index", str(collection["index"])]
    )
    assert result.exit_code == 2 and message in result.output and "queries.jsonl:2" in result.output
    assert '"query_id"' not in result.output


def test_cli_a_query_that_fails_is_reported_and_the_others_still_run(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    (tmp_path / "notes.png").write_text("not a drawing")
    queries = _queries_file(
        collection, tmp_path, [{"id": "bad", "image": "notes.png"}, {"id": "good", "text": "wheel", "k": 2}]
    )
    result = CliRunner().invoke(
        app, ["search", "--queries", str(queries), "--index", str(collection["index"])]
    )
    assert result.exit_code == 1
    assert "query bad:" in result.stderr and "not an image" in result.stderr
    assert [json.loads(line)["query_id"] for line in result.stdout.splitlines()] == ["good", "good"]


def test_cli_several_views_and_a_class_on_the_command_line(collection: dict[str, Path]) -> None:
    loaded = search_index.SearchIndex.load(collection["index"])
    views = [loaded.figures.figures[0].image_path, loaded.figures.figures[-1].image_path]
    args = ["search", "--image", views[0], "--image", views[1], "--index", str(collection["index"]), "--json"]
    result = CliRunner().invoke(app, [*args, "--classification", "08-08", "--k", "50"])
    assert result.exit_code == 0, result.output
    hits = [json.loads(line) for line in result.output.splitlines()]
    brackets = [f for f in loaded.figures.figures if "LOCARNO:0808" in f.classes]
    assert {h["figure_id"] for h in hits} == {f.figure_id for f in brackets}
    assert hits == [
        json.loads(json.dumps(asdict(h)))
        for h in loaded.search_images([Path(v) for v in views], k=50, classification="08-08")
    ]
    refused = CliRunner().invoke(app, [*args, "--classification", "wheel"])
    assert refused.exit_code == 2 and "not a class" in refused.output
    refused = CliRunner().invoke(app, [*args, "--rerank"])
    assert refused.exit_code == 2 and "one drawing" in refused.output


def test_the_index_keeps_patentlmm_s_descriptions_and_the_cli_passes_them(
    collection: dict[str, Path], tmp_path: Path
) -> None:
    rows = list(read_jsonl(collection["figures"]))[:-2]
    described = {rows[0]["image_id"]: "A bracket with two holes.", rows[3]["image_id"]: " A wheel. "}
    generated = tmp_path / "generated_descriptions.json"
    generated.write_text(json.dumps(described))
    out = tmp_path / "described"
    result = CliRunner().invoke(
        app,
        [
            "index", str(collection["figures"]), "--out", str(out), "--encoder", str(collection["encoder"]),
            "--generated-descriptions", str(generated),
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    loaded = search_index.SearchIndex.load(out)
    assert loaded.manifest["generated_descriptions"] == {"path": str(generated), "figures": 2}
    texts = {f.figure_id: f.generated_description for f in loaded.figures.figures}
    assert (
        texts[rows[0]["image_id"]] == "A bracket with two holes." and texts[rows[3]["image_id"]] == "A wheel."
    )
    assert sum(1 for text in texts.values() if text) == 2  # the others show none
    hit = loaded.search_image(Path(rows[0]["image_path"]), k=1)[0]
    assert (hit.generated_description, hit.figure_labels, hit.title) == (
        "A bracket with two holes.",
        rows[0]["figure_labels"],
        rows[0]["title"],
    )
    generated.write_text(json.dumps(["not", "a", "mapping"]))
    with pytest.raises(ValueError, match="image_id -> description"):
        search_index.build_search_index(
            collection["figures"],
            collection["encoder"],
            tmp_path / "never",
            search_index.BuildOptions(generated_descriptions=generated),
        )
    assert not (tmp_path / "never").exists()
