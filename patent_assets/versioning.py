"""Data versioning with DVC: every data asset's output is hashed, pushed to a remote, and
recorded in git, so the exact bytes of any past materialization can be brought back.

The DVC workspace is its own small git + DVC repository at `Home.data`, separate from the
code repository: data commits never mix with code commits, and a fresh machine only needs
that directory (or just the remote and an md5) to restore. The remote `default` is a local
directory (`Home.dvc_remote`) unless configured otherwise, e.g. `s3://bucket/prefix` with
`{"endpointurl": "http://minio:9000"}` and the access keys in the usual AWS environment
variables: the same code, only configuration differs.

How DVC is driven:
- `dvc.repo.Repo` (the Python API) for init, config, add, push and pull: stable, no process
  start-up per call (~0.5 s each for the CLI), and errors arrive as typed exceptions.
- The `git` CLI for commits, log and show: DVC's Python API has no commit/log, and scmrepo's
  backends differ in what they support; the git CLI is the reference behaviour.

Repo-mutating operations hold a file lock (`filelock`, a dependency of DVC) next to the
repository, so two Dagster runs versioning different partitions at once do not interleave
their git index and DVC state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, NamedTuple

import yaml
from filelock import FileLock

from patent_assets.records import atomic_write, replace_path

if TYPE_CHECKING:
    from dvc.repo import Repo

    from patent_assets.layout import Home

log = logging.getLogger(__name__)

REMOTE_NAME = "default"
GIT_NAME = "PatentFlow"
GIT_EMAIL = "patentflow@localhost"
LOCK_TIMEOUT_S = 600.0
_MD5 = re.compile(r"^[0-9a-f]{32}(\.dir)?$")
# Remote options that are credentials: kept in the untracked .dvc/config.local, never committed.
_SECRET_OPTIONS = frozenset(
    {
        "access_key_id",
        "secret_access_key",
        "session_token",
        "password",
        "token",
        "account_key",
        "sas_token",
        "client_secret",
        "key",
        "credentialpath",
    }
)
# Variables that would point git at another repository than the data repository.
_GIT_ENV_OVERRIDES = ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_PREFIX")


class VersioningError(RuntimeError):
    """A versioning step failed; the message names the path and the reason."""


@dataclass(frozen=True)
class DataVersion:
    path: str  # relative to the data repository, POSIX
    md5: str  # DVC's md5: for a directory the md5 of its listing, with the ".dir" suffix
    size: int  # bytes
    nfiles: int  # 1 for a file
    dvc_file: str  # the .dvc file, relative to the data repository
    commit: str  # the data repository's git commit that records this version
    remote: str  # where the bytes were pushed

    def metadata(self) -> dict[str, Any]:
        """The fields an asset puts in its materialization metadata."""
        return {f"dvc_{key}": value for key, value in asdict(self).items()}


class HistoryEntry(NamedTuple):
    commit: str
    md5: str
    date: str  # ISO 8601, the commit's author date
    message: str


def _dvc_environment() -> None:
    # DVC reads these at run time; analytics would try to reach the network.
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("DVC_NO_UPDATER", "1")


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _is_local_url(url: str) -> bool:
    return "://" not in url


class DataRepo:
    """The git + DVC repository that versions the data assets' outputs."""

    def __init__(
        self,
        root: Path,
        remote_url: str | None = None,
        remote_options: dict[str, str] | None = None,
    ) -> None:
        self.root = Path(root).expanduser().resolve()
        # Default remote: Home's layout puts `dvc-remote` beside `data`.
        url = remote_url or str(self.root.parent / "dvc-remote")
        self.remote_url = str(Path(url).expanduser().resolve()) if _is_local_url(url) else url
        self.remote_options = dict(remote_options or {})
        self._lock = FileLock(self.root.parent / f".{self.root.name}.lock", timeout=LOCK_TIMEOUT_S)
        self._ready = False

    @classmethod
    def from_home(
        cls,
        home: Home | None = None,
        remote_url: str | None = None,
        remote_options: dict[str, str] | None = None,
    ) -> DataRepo:
        """The data repository of a PatentFlow home ($PATENTFLOW_HOME by default), initialised."""
        from patent_assets.layout import Home

        home = home or Home.from_env()
        return cls(home.data, remote_url or str(home.dvc_remote), remote_options).open_or_init()

    # ----------------------------------------------------------------------------- set-up

    def open_or_init(self) -> DataRepo:
        """Create the git and DVC repositories if missing, and bring the configuration up to date."""
        with self._lock:
            self._open_or_init_locked()
        return self

    def _open_or_init_locked(self) -> None:
        from dvc.config import Config
        from dvc.repo import Repo

        _dvc_environment()
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / ".git").exists():
            self._git("init", "-q")
        # A local identity so that commits work on a fresh machine; no signing prompts.
        self._git("config", "user.name", GIT_NAME)
        self._git("config", "user.email", GIT_EMAIL)
        self._git("config", "commit.gpgsign", "false")
        if not (self.root / ".dvc").is_dir():
            with _quiet("dvc.repo.init"):  # its "now commit the changes" hint is for CLI users
                repo = Repo.init(str(self.root))
            # init opened the repo with the shared default site cache (/var/tmp/dvc/...); ours
            # lives under the repository (below), so drop the one init made for this repo.
            default_site_cache = repo.site_cache_dir
            repo.close()
            shutil.rmtree(default_site_cache, ignore_errors=True)

        config = Config(dvc_dir=str(self.root / ".dvc"), validate=False)
        remote = {"url": self.remote_url}
        secrets = {}
        for key, value in self.remote_options.items():
            (secrets if key in _SECRET_OPTIONS else remote)[key] = value
        with config.edit("repo") as conf:
            conf["core"]["remote"] = REMOTE_NAME
            conf["core"]["autostage"] = True
            conf["core"]["analytics"] = False
            conf["core"]["check_update"] = False
            conf["remote"][REMOTE_NAME] = remote
        with config.edit("local") as conf:
            # Machine-local and never committed: DVC's state/index DB, and credentials if given.
            conf["core"]["site_cache_dir"] = str(self.root / ".dvc" / "tmp" / "site-cache")
            if secrets:
                conf["remote"][REMOTE_NAME] = secrets
            else:
                conf.get("remote", {}).pop(REMOTE_NAME, None)
        if _is_local_url(self.remote_url):
            Path(self.remote_url).mkdir(parents=True, exist_ok=True)

        setup_files = [".dvc/config", ".dvc/.gitignore", ".dvcignore"]
        self._git("add", "--", *setup_files)
        if self._staged_changes(setup_files):
            self._git("commit", "-q", "-m", "Configure the DVC data repository", "--", *setup_files)
        self._ready = True

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._open_or_init_locked()

    @contextlib.contextmanager
    def _dvc(self) -> Iterator[Repo]:
        from dvc.repo import Repo

        _dvc_environment()
        with Repo(str(self.root)) as repo:
            yield repo

    # ------------------------------------------------------------------------------- track

    def track(self, rel_path: str | Path, message: str) -> DataVersion:
        """Version the file or directory at rel_path: `dvc add`, `dvc push`, git commit.

        Idempotent: unchanged data yields the same md5 and no new commit. The commit happens only
        after the push succeeded, so a recorded version is always restorable from the remote.
        """
        from dvc.exceptions import DvcException

        rel = self._relative(rel_path)
        target = self.root / rel
        with self._lock:
            self._ensure_ready()
            if not target.exists():
                raise FileNotFoundError(f"{rel}: nothing to version at {target}")
            dvc_file = self._dvc_file(rel)
            try:
                with self._dvc() as repo:
                    repo.add([str(target)])
                    repo.push(targets=[str(self.root / dvc_file)], remote=REMOTE_NAME)
            except DvcException as error:
                raise VersioningError(f"{rel}: DVC could not version it: {error}") from error

            tracked = [dvc_file]
            gitignore = PurePosixPath(rel).parent / ".gitignore"
            if (self.root / gitignore).exists():
                tracked.append(str(gitignore))
            self._git("add", "--", *tracked)
            if self._staged_changes(tracked):
                self._git("commit", "-q", "-m", message, "--", *tracked)
            commit = self._git("log", "-1", "--format=%H", "--", dvc_file).strip()
            out = self._read_out(dvc_file)
        return DataVersion(
            path=rel,
            md5=out["md5"],
            size=int(out.get("size", 0)),
            nfiles=int(out.get("nfiles", 1)),
            dvc_file=dvc_file,
            commit=commit,
            remote=self.remote_url,
        )

    # ----------------------------------------------------------------------------- restore

    def restore(
        self,
        rel_path: str | Path,
        *,
        commit: str | None = None,
        md5: str | None = None,
        dest: Path | None = None,
    ) -> Path:
        """Bring back the exact bytes of a version of rel_path; returns where they now are.

        The version is the one recorded in git `commit`, or the one with DVC hash `md5` (which
        needs no git history: the materialization metadata is enough), or HEAD's. Objects come
        from the local cache when there, else from the remote.

        Without `dest` the workspace copy at rel_path and its .dvc file are replaced (like
        `git checkout <commit> -- x.dvc && dvc checkout`; the next `track` commits them if they
        differ from HEAD). With `dest`, the bytes land at dest and the workspace is left as is.
        """
        if commit is not None and md5 is not None:
            raise ValueError(f"{rel_path}: restore by commit or by md5, not both")
        rel = self._relative(rel_path)
        with self._lock:
            self._ensure_ready()
            dvc_text = self._dvc_text_for(rel, commit=commit, md5=md5)
            if dest is None:
                return self._restore_in_place(rel, dvc_text)
            return self._restore_to(rel, dvc_text, Path(dest))

    def _dvc_text_for(self, rel: str, *, commit: str | None, md5: str | None) -> str:
        dvc_file = self._dvc_file(rel)
        if md5 is not None:
            if not _MD5.match(md5):
                raise ValueError(f"{rel}: {md5!r} is not a DVC md5 (32 hex digits, '.dir' for a directory)")
            # `hash: md5` marks DVC 3 hashing, whose objects live under files/md5/ in the remote.
            out = {"md5": md5, "hash": "md5", "path": PurePosixPath(rel).name}
            return yaml.safe_dump({"outs": [out]}, sort_keys=False)
        revision = commit or "HEAD"
        try:
            return self._git("show", f"{revision}:{dvc_file}")
        except VersioningError as error:
            raise VersioningError(f"{rel}: no version recorded in commit {revision}") from error

    def _restore_in_place(self, rel: str, dvc_text: str) -> Path:
        from dvc.exceptions import DvcException

        dvc_path = self.root / self._dvc_file(rel)
        with atomic_write(dvc_path) as handle:
            handle.write(dvc_text)
        try:
            with self._dvc() as repo:
                repo.pull(targets=[str(dvc_path)], remote=REMOTE_NAME, force=True)
        except DvcException as error:
            raise VersioningError(f"{rel}: could not restore it from {self.remote_url}: {error}") from error
        return self.root / rel

    def _restore_to(self, rel: str, dvc_text: str, dest: Path) -> Path:
        """Pull into a throw-away DVC repository (no git) that shares our cache and remote, then
        move the result to dest: the workspace stays untouched, and dest is never half-written."""
        from dvc.config import Config
        from dvc.exceptions import DvcException
        from dvc.repo import Repo

        dest = dest.expanduser().resolve()
        dest.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.restore-"))
        try:
            remote = Config(dvc_dir=str(self.root / ".dvc"))["remote"][REMOTE_NAME]
            (scratch / ".dvc").mkdir()
            config = Config.init(str(scratch / ".dvc"))
            with config.edit("repo") as conf:
                conf["core"].update(
                    no_scm=True,
                    analytics=False,
                    check_update=False,
                    remote=REMOTE_NAME,
                    site_cache_dir=str(scratch / ".dvc" / "tmp" / "site-cache"),
                )
                conf["cache"]["dir"] = str(self.root / ".dvc" / "cache")
                conf["remote"][REMOTE_NAME] = dict(remote)
            name = PurePosixPath(rel).name
            (scratch / f"{name}.dvc").write_text(dvc_text, encoding="utf-8")
            _dvc_environment()
            with Repo(str(scratch)) as repo:
                repo.pull(targets=[str(scratch / f"{name}.dvc")], remote=REMOTE_NAME, force=True)
            replace_path(scratch / name, dest)
        except DvcException as error:
            raise VersioningError(f"{rel}: could not restore it from {self.remote_url}: {error}") from error
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return dest

    # ----------------------------------------------------------------------------- history

    def history(self, rel_path: str | Path) -> list[HistoryEntry]:
        """Every committed version of rel_path, newest first."""
        rel = self._relative(rel_path)
        dvc_file = self._dvc_file(rel)
        with self._lock:
            self._ensure_ready()
            log_text = self._git("log", "--format=%H%x1f%aI%x1f%s", "--", dvc_file)
        entries = []
        for line in log_text.splitlines():
            commit, date, message = line.split("\x1f", 2)
            try:
                out = self._parse_out(self._git("show", f"{commit}:{dvc_file}"), dvc_file)
            except VersioningError:
                continue  # the commit deleted the .dvc file: no version to restore there
            entries.append(HistoryEntry(commit, out["md5"], date, message))
        return entries

    # ----------------------------------------------------------------------------- helpers

    def _relative(self, rel_path: str | Path) -> str:
        path = Path(rel_path)
        absolute = (path if path.is_absolute() else self.root / path).resolve()
        try:
            rel = absolute.relative_to(self.root).as_posix()
        except ValueError:
            raise ValueError(f"{rel_path}: outside the data repository {self.root}") from None
        if rel in ("", ".") or rel.split("/")[0] in (".git", ".dvc"):
            raise ValueError(f"{rel_path}: not a data path inside {self.root}")
        return rel

    @staticmethod
    def _dvc_file(rel: str) -> str:
        return f"{rel}.dvc"

    def _read_out(self, dvc_file: str) -> dict[str, Any]:
        return self._parse_out((self.root / dvc_file).read_text(encoding="utf-8"), dvc_file)

    @staticmethod
    def _parse_out(text: str, dvc_file: str) -> dict[str, Any]:
        data = yaml.safe_load(text) or {}
        outs = data.get("outs") or []
        if len(outs) != 1 or "md5" not in outs[0]:
            raise VersioningError(f"{dvc_file}: expected one output with an md5, found {outs!r}")
        return outs[0]

    def _staged_changes(self, paths: list[str]) -> bool:
        result = subprocess.run(
            ["git", "diff", "--cached", "--quiet", "--", *paths],
            cwd=self.root,
            env=self._git_env(),
            capture_output=True,
            check=False,
        )
        if result.returncode not in (0, 1):
            raise VersioningError(f"git diff failed in {self.root}: {result.stderr.decode().strip()}")
        return result.returncode == 1

    @staticmethod
    def _git_env() -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _GIT_ENV_OVERRIDES}
        env["GIT_TERMINAL_PROMPT"] = "0"
        return env

    def _git(self, *args: str) -> str:
        result = subprocess.run(
            ["git", *args],
            cwd=self.root,
            env=self._git_env(),
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise VersioningError(
                f"git {' '.join(args)} failed in {self.root}: {result.stderr.strip() or result.stdout.strip()}"
            )
        return result.stdout
