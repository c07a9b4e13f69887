"""Real DVC and real git on a tmp_path PATENTFLOW_HOME: no mocks."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from dvc.api import DVCFileSystem

from patent_assets.layout import Home
from patent_assets.versioning import DataRepo, DataVersion, VersioningError


def write_release(directory: Path, count: int, tag: str) -> dict[str, bytes]:
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (directory / f"sheet{index:03d}.txt").write_bytes(f"{tag} sheet {index}\n".encode())
    return snapshot(directory)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.relative_to(directory).as_posix(): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


def git(root: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=True).stdout


def commit_count(root: Path) -> int:
    return int(git(root, "rev-list", "--count", "HEAD"))


def remote_object(remote: Path, md5: str) -> Path:
    return remote / "files" / "md5" / md5[:2] / md5[2:]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Home:
    monkeypatch.setenv("PATENTFLOW_HOME", str(tmp_path / "home"))
    return Home.from_env()


@pytest.fixture
def repo(home: Home) -> DataRepo:
    return DataRepo.from_home(home)


def test_init_is_idempotent_and_configured(home: Home, repo: DataRepo) -> None:
    root = home.data
    assert (root / ".git").is_dir() and (root / ".dvc").is_dir()
    commits = commit_count(root)
    DataRepo(root, str(home.dvc_remote)).open_or_init()
    assert commit_count(root) == commits  # nothing to configure the second time
    assert git(root, "config", "user.name").strip() == "PatentFlow"
    assert git(root, "config", "user.email").strip() == "patentflow@localhost"
    config = (root / ".dvc" / "config").read_text()
    assert "autostage = True" in config and "analytics = False" in config
    assert str(home.dvc_remote) in config
    assert git(root, "status", "--porcelain") == ""  # the set-up is committed


def test_track_a_directory_pushes_and_commits(home: Home, repo: DataRepo) -> None:
    release = home.data / "figures" / "r20240102"
    files = write_release(release, 5, "v1")

    version = repo.track("figures/r20240102", "figures r20240102")

    dvc_file = yaml.safe_load((home.data / "figures" / "r20240102.dvc").read_text())
    assert version.md5 == dvc_file["outs"][0]["md5"]
    assert version.md5.endswith(".dir")
    # dvc.api sees the same hash at the recorded commit.
    assert DVCFileSystem(str(home.data), rev=version.commit).info("figures/r20240102")["md5"] == version.md5
    assert (version.nfiles, version.size) == (5, sum(len(b) for b in files.values()))
    assert version.commit == git(home.data, "rev-parse", "HEAD").strip()
    assert git(home.data, "log", "-1", "--format=%s").strip() == "figures r20240102"
    assert git(home.data, "status", "--porcelain") == ""  # .dvc and .gitignore committed
    assert "/r20240102" in (home.data / "figures" / ".gitignore").read_text()
    # The remote holds every file by its md5, and the directory listing.
    for content in files.values():
        assert remote_object(home.dvc_remote, hashlib.md5(content).hexdigest()).read_bytes() == content
    assert remote_object(home.dvc_remote, version.md5).is_file()
    assert version.metadata()["dvc_md5"] == version.md5
    # DVC's state and index DB stay under the home, not in the shared /var/tmp/dvc.
    assert list((home.data / ".dvc" / "tmp" / "site-cache" / "repo").iterdir())


def test_track_a_file_uses_its_plain_md5(repo: DataRepo, home: Home) -> None:
    shard = home.data / "ocr" / "shard-0001.jsonl"
    shard.parent.mkdir(parents=True)
    shard.write_bytes(b'{"words": ["FIG.", "1"]}\n')

    version = repo.track("ocr/shard-0001.jsonl", "ocr shard")

    assert version.md5 == hashlib.md5(shard.read_bytes()).hexdigest()
    assert version.nfiles == 1
    assert remote_object(home.dvc_remote, version.md5).read_bytes() == shard.read_bytes()


def test_versions_history_and_restore_after_losing_workspace_and_cache(home: Home, repo: DataRepo) -> None:
    release = home.data / "figures" / "r1"
    first_bytes = write_release(release, 4, "v1")
    first = repo.track("figures/r1", "v1")

    again = repo.track("figures/r1", "v1 unchanged")
    assert again == first  # same md5, same commit
    commits = commit_count(home.data)

    (release / "sheet000.txt").write_bytes(b"corrected OCR\n")
    (release / "extra.txt").write_bytes(b"a late sheet\n")
    second = repo.track("figures/r1", "v2")
    assert second.md5 != first.md5 and second.commit != first.commit
    assert commit_count(home.data) == commits + 1
    second_bytes = snapshot(release)

    assert [(h.commit, h.md5, h.message) for h in repo.history("figures/r1")] == [
        (second.commit, second.md5, "v2"),
        (first.commit, first.md5, "v1"),
    ]

    # In place over v2: the later file must go, the changed one revert.
    assert snapshot(repo.restore("figures/r1", commit=first.commit)) == first_bytes

    # Lose the workspace and the local cache: the bytes come back from the remote.
    shutil.rmtree(release)
    shutil.rmtree(home.data / ".dvc" / "cache")
    restored = repo.restore("figures/r1", commit=first.commit)
    assert restored == release
    assert snapshot(restored) == first_bytes

    # By md5 into another place; the workspace is left alone.
    shutil.rmtree(home.data / ".dvc" / "cache")
    elsewhere = repo.restore("figures/r1", md5=second.md5, dest=home.root / "exported" / "r1")
    assert snapshot(elsewhere) == second_bytes
    assert snapshot(release) == first_bytes
    assert not list((home.root / "exported").glob(".*restore*"))  # scratch repo removed

    # Re-tracking the restored v1 records it again, as a new commit with the old md5.
    assert repo.track("figures/r1", "back to v1").md5 == first.md5


def test_restore_by_md5_on_a_fresh_machine(tmp_path: Path, home: Home, repo: DataRepo) -> None:
    files = write_release(home.data / "figures" / "r9", 3, "only copy")
    version = repo.track("figures/r9", "r9")
    shutil.rmtree(home.data)  # git history, workspace and cache all gone; only the remote is left

    fresh = DataRepo(tmp_path / "other-machine" / "data", remote_url=str(home.dvc_remote)).open_or_init()
    restored = fresh.restore("figures/r9", md5=version.md5)

    assert snapshot(restored) == files


def test_unchanged_data_makes_no_commit(home: Home, repo: DataRepo) -> None:
    write_release(home.data / "index", 2, "idx")
    first = repo.track("index", "index")
    commits = commit_count(home.data)
    for _ in range(2):
        assert repo.track("index", "index again") == first
    assert commit_count(home.data) == commits


def test_two_threads_track_different_partitions(home: Home) -> None:
    releases = {key: write_release(home.data / "figures" / key, 20, key) for key in ("r1", "r2")}
    barrier = threading.Barrier(2)
    versions: dict[str, DataVersion] = {}
    errors: list[BaseException] = []

    def track(key: str) -> None:
        # Each "run" has its own DataRepo, as two Dagster processes would.
        repo = DataRepo.from_home(home)
        barrier.wait()
        try:
            versions[key] = repo.track(f"figures/{key}", f"figures {key}")
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=track, args=(key,)) for key in releases]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert versions["r1"].commit != versions["r2"].commit
    log = git(home.data, "log", "--format=%s")
    assert "figures r1" in log and "figures r2" in log
    gitignore = (home.data / "figures" / ".gitignore").read_text().split()
    assert {"/r1", "/r2"} <= set(gitignore)  # both writers' entries in the shared .gitignore
    assert git(home.data, "status", "--porcelain") == ""
    repo = DataRepo.from_home(home)
    for key, files in releases.items():
        shutil.rmtree(home.data / "figures" / key)
        assert snapshot(repo.restore(f"figures/{key}", md5=versions[key].md5)) == files


def test_separate_processes_track_at_once(home: Home) -> None:
    """Dagster runs are processes: without the file lock they collide on .git/config and the index."""
    keys = ["r1", "r2", "r3"]
    for key in keys:
        write_release(home.data / "figures" / key, 30, key)
    script = (
        "import sys; from pathlib import Path; from patent_assets.versioning import DataRepo; "
        "DataRepo(Path(sys.argv[1])).track(sys.argv[2], sys.argv[3])"
    )
    runs = [
        subprocess.Popen(
            [sys.executable, "-c", script, str(home.data), f"figures/{key}", f"figures {key}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for key in keys
    ]
    outputs = [run.communicate(timeout=120)[0] for run in runs]
    assert [run.returncode for run in runs] == [0, 0, 0], outputs
    log = git(home.data, "log", "--format=%s")
    assert all(f"figures {key}" in log for key in keys)
    assert git(home.data, "status", "--porcelain") == ""


def test_bad_requests_name_the_path(home: Home, repo: DataRepo) -> None:
    with pytest.raises(FileNotFoundError, match="figures/missing"):
        repo.track("figures/missing", "nothing")
    with pytest.raises(ValueError, match="outside the data repository"):
        repo.track(home.root / "elsewhere", "outside")
    with pytest.raises(ValueError, match="not a DVC md5"):
        repo.restore("figures/r1", md5="nope")
    with pytest.raises(VersioningError, match="figures/r1: no version recorded"):
        repo.restore("figures/r1")
    with pytest.raises(VersioningError, match="figures/r1: could not restore"):
        repo.restore("figures/r1", md5="0" * 32 + ".dir", dest=home.root / "out")
    assert not (home.root / "out").exists()
    assert repo.history("figures/r1") == []


def test_s3_remote_is_configuration_only(tmp_path: Path) -> None:
    repo = DataRepo(
        tmp_path / "data",
        remote_url="s3://patentflow/dvc",
        remote_options={"endpointurl": "http://127.0.0.1:9000", "access_key_id": "test-key"},
    ).open_or_init()
    committed = (repo.root / ".dvc" / "config").read_text()
    local = (repo.root / ".dvc" / "config.local").read_text()
    assert "s3://patentflow/dvc" in committed and "http://127.0.0.1:9000" in committed
    assert "test-key" not in committed and "test-key" in local  # credentials never committed
    assert ".dvc/config.local" not in git(repo.root, "ls-files")


def test_a_100_file_directory_is_one_version_and_tracking_it_unchanged_commits_nothing(
    home: Home, repo: DataRepo
) -> None:
    """(How long tracking takes is measured by benchmarks/data_pipeline.py, not asserted here.)"""
    write_release(home.data / "figures" / "big", 100, "timing")
    version = repo.track("figures/big", "100 files")
    again = repo.track("figures/big", "100 files again")
    assert version.nfiles == 100 and version.md5.endswith(".dir")
    assert (again.md5, again.commit) == (version.md5, version.commit)


def test_s3_compatible_remote_against_a_local_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same code against an S3 API: moto's server on 127.0.0.1, DVC through dvc-s3."""
    # dvc-s3 and moto[server] are declared dependencies: a missing one fails here, never skips
    import boto3
    import dvc_s3  # noqa: F401
    from moto import server as moto_server

    # Access keys come from the environment, as in production; moto accepts any.
    for name, value in {
        "AWS_ACCESS_KEY_ID": "patentflow-test",
        "AWS_SECRET_ACCESS_KEY": "patentflow-test",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(name, value)
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        s3 = boto3.client("s3", endpoint_url=endpoint)
        s3.create_bucket(Bucket="patentflow")

        repo = DataRepo(
            tmp_path / "data", remote_url="s3://patentflow/dvc", remote_options={"endpointurl": endpoint}
        ).open_or_init()
        files = write_release(repo.root / "figures" / "r1", 5, "s3")
        version = repo.track("figures/r1", "figures r1 to s3")

        keys = {item["Key"] for item in s3.list_objects_v2(Bucket="patentflow")["Contents"]}
        expected = {f"dvc/files/md5/{version.md5[:2]}/{version.md5[2:]}"} | {
            f"dvc/files/md5/{md5[:2]}/{md5[2:]}"
            for md5 in (hashlib.md5(content).hexdigest() for content in files.values())
        }
        assert expected == keys

        shutil.rmtree(repo.root / "figures" / "r1")
        shutil.rmtree(repo.root / ".dvc" / "cache")
        assert snapshot(repo.restore("figures/r1", commit=version.commit)) == files
    finally:
        server.stop()
