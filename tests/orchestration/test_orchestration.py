"""The data half of the graph, materialized for real on a small synthetic release set."""

from __future__ import annotations

import io
import shutil
import tarfile
import zipfile
from pathlib import Path

import dagster as dg
import pytest
from PIL import Image
from typer.testing import CliRunner

from orchestration.assets import releases
from orchestration.definitions import build_definitions
from orchestration.resources import HttpIndex, LandingDirectory, PatentflowHome
from orchestration.sensors import new_uspto_releases
from patent_assets import synthetic
from patent_assets.records import read_figures, read_jsonl
from patentflow.cli import app
from tests.http_server import serve


@pytest.fixture(scope="module")
def landing(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("landing")
    synthetic.generate(synthetic.SyntheticConfig(releases=2, patents_per_release=3, seed=7), out)
    return out


@pytest.fixture(scope="module")
def materialized(landing: Path, tmp_path_factory: pytest.TempPathFactory):
    home_dir = tmp_path_factory.mktemp("home")
    defs = build_definitions(
        release_source=LandingDirectory(path=str(landing)), home=PatentflowHome(root=str(home_dir))
    )
    instance = dg.DagsterInstance.ephemeral()
    keys = sorted(r.key for r in LandingDirectory(path=str(landing)).list_releases())
    instance.add_dynamic_partitions(releases.name, keys)
    results = {
        key: defs.resolve_job_def("ingest_release").execute_in_process(instance=instance, partition_key=key)
        for key in keys
    }
    dataset = defs.resolve_job_def("build_dataset").execute_in_process(instance=instance)
    return defs, instance, home_dir, keys, results, dataset


def test_every_release_is_ingested_validated_and_versioned(materialized) -> None:
    _, _, home_dir, keys, results, dataset = materialized
    assert len(keys) == 2 and all(r.success for r in results.values()) and dataset.success
    for key, result in results.items():
        checks = result.get_asset_check_evaluations()
        assert checks and all(c.passed for c in checks), [c.metadata for c in checks]
        figures_event = next(
            m
            for m in result.get_asset_materialization_events()
            if m.asset_key == dg.AssetKey("release_figures")
        )
        metadata = figures_event.materialization.metadata
        assert metadata["figures"].value > 0
        assert str(metadata["dvc_md5"].value).endswith(".dir")
        records = read_figures(home_dir / "data" / "releases" / key / "figures" / "figures.jsonl")
        assert {r.release for r in records} == {key}
        assert all(r.figure_labels and r.brief_description and r.ocr.words for r in records)


def test_dataset_splits_and_llava(materialized) -> None:
    _, _, home_dir, keys, _, _ = materialized
    dataset_dir = home_dir / "data" / "dataset"
    rows = list(read_jsonl(dataset_dir / "figures" / "figures.jsonl"))
    assert {r["release"] for r in rows} == set(keys)
    all_ids = (dataset_dir / "figures" / "splits" / "all.txt").read_text().split()
    assert sorted(all_ids) == sorted(r["image_id"] for r in rows)
    assert list((dataset_dir / "llava_json").glob("brief_*.json"))


def test_rematerializing_an_unchanged_release_is_cached(materialized) -> None:
    defs, instance, _, keys, results, _ = materialized
    again = defs.resolve_job_def("ingest_release").execute_in_process(
        instance=instance, partition_key=keys[0]
    )
    events = {
        m.asset_key.to_user_string(): m.materialization.metadata
        for m in again.get_asset_materialization_events()
    }
    for asset in ("release_documents", "sheet_images", "sheet_ocr", "release_figures"):
        assert events[asset]["reused"].value is True, asset
    # the data did not change, so neither did its DVC version
    before = results[keys[0]]
    first = {
        m.asset_key.to_user_string(): m.materialization.metadata
        for m in before.get_asset_materialization_events()
    }
    assert events["release_figures"]["dvc_md5"] == first["release_figures"]["dvc_md5"]
    assert events["release_figures"]["dvc_commit"] == first["release_figures"]["dvc_commit"]


def test_sensor_adds_new_and_late_older_releases_once(landing: Path, tmp_path: Path) -> None:
    drop = tmp_path / "landing"
    drop.mkdir()
    files = sorted(landing.iterdir())
    newest, oldest = files[-1], files[0]
    shutil.copy(newest, drop / newest.name)
    source = LandingDirectory(path=str(drop))
    with dg.instance_for_test() as instance:
        first = new_uspto_releases(
            dg.build_sensor_context(instance=instance, resources={"release_source": source})
        )
        assert [r.partition_key for r in first.run_requests] == [source.list_releases()[0].key]
        instance.add_dynamic_partitions(releases.name, first.dynamic_partitions_requests[0].partition_keys)
        # nothing new: no run, even if evaluated again
        again = new_uspto_releases(
            dg.build_sensor_context(instance=instance, resources={"release_source": source})
        )
        assert not again.run_requests
        # an OLDER release arrives late: still picked up
        shutil.copy(oldest, drop / oldest.name)
        late = new_uspto_releases(
            dg.build_sensor_context(instance=instance, resources={"release_source": source})
        )
        assert [r.partition_key for r in late.run_requests] == [min(r.key for r in source.list_releases())]
        assert late.run_requests[0].run_key == f"release:{late.run_requests[0].partition_key}"


def test_http_index_is_the_same_resource_interface(landing: Path, tmp_path: Path) -> None:
    """The second release-source implementation: an HTTP listing, served for real on 127.0.0.1."""
    files = sorted(landing.iterdir())
    with serve() as server:
        links = "".join(f'<a href="{f.name}">{f.name}</a><br>' for f in files)
        for f in files:
            server.add(f"/grant/{f.name}", f.read_bytes())
        server.add(
            "/grant/",
            f"<html><body><a href='../'>..</a>{links}<a href='x.md5'>x</a></body></html>",
            content_type="text/html",
        )
        source = HttpIndex(url=server.url("/grant/"))
        with dg.instance_for_test() as instance:
            result = new_uspto_releases(
                dg.build_sensor_context(instance=instance, resources={"release_source": source})
            )
        keys = [r.partition_key for r in result.run_requests]
        assert keys == sorted(r.key for r in LandingDirectory(path=str(landing)).list_releases())
        fetched = source.fetch(keys[0], tmp_path / "downloads")
        assert fetched.read_bytes() == files[0].read_bytes()


def _blank_sheets(release: Path, out: Path) -> Path:
    """The same release with every drawing sheet blanked: nothing for OCR to read."""
    blank = io.BytesIO()
    Image.new("1", (600, 800), 1).save(blank, format="TIFF", compression="group4")
    with tarfile.open(release) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""
            if member.name.upper().endswith(".ZIP"):
                buffer = io.BytesIO()
                with zipfile.ZipFile(io.BytesIO(data)) as zin, zipfile.ZipFile(buffer, "w") as zout:
                    for name in zin.namelist():
                        zout.writestr(
                            name, blank.getvalue() if name.upper().endswith(".TIF") else zin.read(name)
                        )
                data = buffer.getvalue()
            member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    return out


def test_a_release_failing_validation_is_blocked_and_kept_out_of_the_dataset(
    landing: Path, tmp_path: Path
) -> None:
    drop = tmp_path / "landing"
    drop.mkdir()
    good, bad = sorted(landing.iterdir())[:2]
    shutil.copy(good, drop / good.name)
    _blank_sheets(bad, drop / bad.name)
    source = LandingDirectory(path=str(drop))
    defs = build_definitions(release_source=source, home=PatentflowHome(root=str(tmp_path / "home")))
    good_key, bad_key = sorted(r.key for r in source.list_releases())
    with dg.instance_for_test() as instance:
        instance.add_dynamic_partitions(releases.name, [good_key, bad_key])
        ingest = defs.resolve_job_def("ingest_release")
        assert ingest.execute_in_process(instance=instance, partition_key=good_key).success
        failed = ingest.execute_in_process(instance=instance, partition_key=bad_key, raise_on_error=False)
        assert not failed.success  # the blocking check fails the run
        [evaluation] = failed.get_asset_check_evaluations()
        assert not evaluation.passed and "ocr_coverage" in str(evaluation.metadata["failing"].value)
        dataset = defs.resolve_job_def("build_dataset").execute_in_process(instance=instance)
        metadata = dataset.get_asset_materialization_events()[0].materialization.metadata
        assert metadata["releases_used"].value == [good_key]
        assert metadata["releases_not_validated"].value == [bad_key]


def test_restore_brings_back_a_past_materialization(materialized, tmp_path: Path, monkeypatch) -> None:
    """The README's restore recipe: the hash in a materialization's metadata brings its data back."""
    _, _, home_dir, keys, results, _ = materialized
    event = next(
        m
        for m in results[keys[0]].get_asset_materialization_events()
        if m.asset_key == dg.AssetKey("release_figures")
    )
    metadata = event.materialization.metadata
    original = (home_dir / "data" / metadata["dvc_path"].value / "figures.jsonl").read_bytes()
    monkeypatch.setenv("PATENTFLOW_HOME", str(home_dir))
    shutil.rmtree(home_dir / "data" / ".dvc" / "cache", ignore_errors=True)  # only the remote has it now
    for option, value in (("--commit", metadata["dvc_commit"].value), ("--md5", metadata["dvc_md5"].value)):
        out = tmp_path / option.strip("-")
        result = CliRunner().invoke(
            app, ["restore", metadata["dvc_path"].value, option, value, "--out", str(out)]
        )
        assert result.exit_code == 0, result.output
        assert (out / "figures.jsonl").read_bytes() == original
