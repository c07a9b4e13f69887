"""External systems as typed resources, each with a local default.

The resources are thin: the work is in `patent_assets` (release_source, store, versioning).
Swapping an implementation (a landing directory for an HTTP index, a local DVC remote for
an S3-compatible one) is configuration, not code.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import dagster as dg

from patent_assets import release_source, versioning
from patent_assets.layout import Home


class PatentflowHome(dg.ConfigurableResource):
    """The root of all runtime state ($PATENTFLOW_HOME); `home` is its layout (`patent_assets.layout.Home`)."""

    root: str = ""  # empty: $PATENTFLOW_HOME, else .patentflow/ in the working directory

    @property
    def home(self) -> Home:
        return Home(Path(self.root).resolve()) if self.root else Home.from_env()


class ReleaseSource(dg.ConfigurableResource, ABC):
    """Where new USPTO weekly releases appear."""

    @abstractmethod
    def list_releases(self) -> list[release_source.Release]: ...

    @abstractmethod
    def fetch(self, key: str, dest_dir: Path) -> Path:
        """A local path to the release with this key (downloaded when remote)."""


class LandingDirectory(ReleaseSource):
    """Release files dropped into a directory (default: $PATENTFLOW_HOME/landing)."""

    path: str = ""

    def _impl(self) -> release_source.LandingDirectoryReleases:
        if self.path:
            return release_source.LandingDirectoryReleases(Path(self.path))
        default = Home.from_env().landing
        default.mkdir(parents=True, exist_ok=True)  # the default drop zone exists from the start
        return release_source.LandingDirectoryReleases(default)

    def list_releases(self) -> list[release_source.Release]:
        return self._impl().list_releases()

    def fetch(self, key: str, dest_dir: Path) -> Path:
        impl = self._impl()
        return impl.fetch(_by_key(impl.list_releases(), key), dest_dir)


class HttpIndex(ReleaseSource):
    """An HTTP directory listing of release files, e.g. USPTO's bulk-data pages."""

    url: str
    pattern: str = release_source.RELEASE_FILE_PATTERN

    def _impl(self) -> release_source.HttpIndexReleases:
        return release_source.HttpIndexReleases(self.url, pattern=self.pattern)

    def list_releases(self) -> list[release_source.Release]:
        return self._impl().list_releases()

    def fetch(self, key: str, dest_dir: Path) -> Path:
        impl = self._impl()
        return impl.fetch(_by_key(impl.list_releases(), key), dest_dir)


def _by_key(releases: list[release_source.Release], key: str) -> release_source.Release:
    for release in releases:
        if release.key == key:
            return release
    raise KeyError(f"release {key!r} is not (or no longer) in the release source")


class DataVersioning(dg.ConfigurableResource):
    """DVC over $PATENTFLOW_HOME/data, pushed to a remote: $PATENTFLOW_HOME/dvc-remote by default,
    S3-compatible with `remote_url: s3://bucket/prefix` and `endpointurl` in remote_options."""

    home: PatentflowHome
    remote_url: str = ""
    remote_options: dict[str, str] = {}

    def repo(self) -> versioning.DataRepo:
        home = self.home.home
        repo = versioning.DataRepo(
            home.data,
            remote_url=self.remote_url or str(home.dvc_remote),
            remote_options=self.remote_options or None,
        )
        repo.open_or_init()
        return repo

    def track(self, path: Path, message: str) -> versioning.DataVersion:
        return self.repo().track(os.path.relpath(path, self.home.home.data), message)


class MlflowTracking(dg.ConfigurableResource):
    """MLflow tracking and model registry: SQLite under $PATENTFLOW_HOME/mlflow by default,
    a tracking server by setting `tracking_uri` (or MLFLOW_TRACKING_URI)."""

    home: PatentflowHome
    tracking_uri: str = ""
    experiment: str = "patentlmm"
    registered_model: str = "patentlmm"
    retrieval_experiment: str = "patent-figure-retrieval"
    retrieval_model: str = "patent-figure-encoder"  # `patentflow index`'s default encoder

    def uri(self) -> str:
        from training import tracking

        uri = self.tracking_uri or tracking.tracking_uri(self.home.home)
        tracking.check_reachable(uri)  # an unreachable server is a clear error before any training
        return uri


class PatentLMMSettings(dg.ConfigurableResource):
    """Which PatentLMM to train: the tiny embedded default, or production from local checkpoints."""

    # a name in training.describe.configs.PRESETS, the jobs' `preset`; model_preset() is that preset
    # with the checkpoint directories below
    preset: str = "tiny"
    # Production: local checkpoint directories (nothing is downloaded); empty keeps the preset's.
    encoder_dir: str = ""
    lm_dir: str = ""
    tokenizer_dir: str = ""
    lora_adapter_dir: str = ""
    launcher: str = "deepspeed"  # or "torchrun"
    nproc_per_node: int = 0  # 0: every GPU of the machine (1 process on a CPU)
    max_steps: int = 0  # 0: the stage's own epochs
    pretrain_steps: int = 200  # PatentMME / PatentLLaMA steps in the embedded default (their jobs' `steps`)
    # Ablations trained beside each challenger (training.describe.commands.ABLATIONS). The gate needs the
    # image-blind one; "no_ocr" also shows what the OCR words add (a stage-2 training more: about
    # 1.5 min of make run, where the tiny model without OCR writes the image-blind one's sentence).
    ablations: list[str] = ["image_blind"]
    # The challenger must beat the champion on this: ROUGE-L of the brief descriptions of the real
    # (USPTO) test figures; "brief_rougeL" judges on every test figure, synthetic ones too
    promotion_metric: str = "brief_real_rougeL"

    def model_preset(self):  # -> training.describe.configs.ModelPreset
        from dataclasses import replace

        from training.describe.configs import PRESETS

        preset = PRESETS[self.preset]
        paths = {
            k: v
            for k, v in {
                "encoder_dir": self.encoder_dir,
                "lm_dir": self.lm_dir,
                "tokenizer_dir": self.tokenizer_dir,
                "lora_adapter_dir": self.lora_adapter_dir,
            }.items()
            if v
        }
        return replace(preset, **paths)


class RetrievalSettings(dg.ConfigurableResource):
    """Which figure encoder to train and how to index. The default: ImageNet EfficientNet-Lite0
    from its PyPI wheel, frozen, with a learned-whitening head fine-tuned on the training patents
    (`tiny`: a small encoder trained from scratch; any backbone by local path)."""

    preset: str = "pretrained"  # the jobs' `preset`: a name in training.retrieval.model.PRESETS
    backbone: str = ""  # e.g. "efficientnet-lite2", "timm:efficientnet_b0", "hf"; empty keeps the preset's
    backbone_dir: str = ""  # local pretrained weights; nothing is downloaded
    text_encoder_dir: str = ""  # a sentence-transformers directory; empty: the embedded MiniLM
    epochs: int = 0  # 0: the training job's default
    # None: the whole encoder trains from pixels (the from-scratch `tiny` preset); 0: the backbone
    # stays frozen (its features cached once per image); k: its last k blocks train too
    trainable_blocks: int | None = 0
    index_kind: str = "flat"  # flat (exact), ivf, hnsw or ivfpq
    index_refine: int = 0  # ivfpq: re-score refine x k PQ candidates exactly; 0: off
    # Image search scores (1 - w) x encoder cosine + w x ink-thumbnail cosine (late fusion);
    # 0: the encoder alone (measured on the real design grants: benchmarks/retrieval_real.py)
    index_thumbnail_weight: float = 0.0
    index_thumbnail_size: int = 32
    # The challenger must beat the champion on this: same-patent mAP of the real (USPTO)
    # held-out figures among the real ones; "same_patent_mAP" judges on every figure
    promotion_metric: str = "real_same_patent_mAP"

    def encoder_overrides(self) -> dict[str, str]:
        return {k: v for k, v in {"backbone": self.backbone, "backbone_dir": self.backbone_dir}.items() if v}


class TrainingLauncher(dg.ConfigurableResource):
    """Where each training step runs, always through Dagster Pipes and always the same
    `python -m training ...` (or DeepSpeed launcher) command: a subprocess of the Dagster process
    (`subprocess`, the embedded default), or a Kubernetes pod of its own (`k8s`, dagster-k8s's
    `PipesK8sClient`) from the code location's image (`deploy/Dockerfile`), with
    $PATENTFLOW_HOME on a shared volume mounted at the same path, so that configs, data and
    models are where the command says."""

    home: PatentflowHome
    kind: str = "subprocess"  # or "k8s"
    image: str = ""  # k8s: the code location's image
    namespace: str = ""  # k8s: "" is the kube config's namespace
    gpus: int = 0  # k8s: nvidia.com/gpu per pod; the DeepSpeed launcher starts one process per GPU
    cpu: str = ""  # k8s: requests, e.g. "8"
    memory: str = ""  # k8s: requests and limit, e.g. "64Gi"
    home_claim: str = ""  # k8s: the PersistentVolumeClaim holding $PATENTFLOW_HOME
    service_account: str = ""
    # k8s: the Dagster process's variables a pod gets (the image's environment is its own)
    forward_env: list[str] = [
        "PATENTFLOW_HOME",
        "MLFLOW_TRACKING_URI",
        "DVC_NO_ANALYTICS",
        "MLFLOW_DISABLE_TELEMETRY",
    ]
    load_incluster_config: bool = True  # k8s: False reads `kubeconfig_file` instead
    kubeconfig_file: str = ""

    @classmethod
    def from_environment(cls, home: PatentflowHome) -> TrainingLauncher:
        """The launcher a deployment configures through its environment (deploy/helm-values.yaml):
        PATENTFLOW_LAUNCHER (subprocess or k8s), PATENTFLOW_IMAGE, PATENTFLOW_NAMESPACE,
        PATENTFLOW_TRAINING_GPUS, PATENTFLOW_TRAINING_CPU, PATENTFLOW_TRAINING_MEMORY,
        PATENTFLOW_HOME_CLAIM, PATENTFLOW_SERVICE_ACCOUNT; unset is the embedded default."""
        env = os.environ.get
        return cls(
            home=home,
            kind=env("PATENTFLOW_LAUNCHER", "subprocess"),
            image=env("PATENTFLOW_IMAGE", ""),
            namespace=env("PATENTFLOW_NAMESPACE", ""),
            gpus=int(env("PATENTFLOW_TRAINING_GPUS", "0") or 0),
            cpu=env("PATENTFLOW_TRAINING_CPU", ""),
            memory=env("PATENTFLOW_TRAINING_MEMORY", ""),
            home_claim=env("PATENTFLOW_HOME_CLAIM", ""),
            service_account=env("PATENTFLOW_SERVICE_ACCOUNT", ""),
        )

    def processes(self) -> int | None:
        """Training processes per step: one per GPU of a pod; None (every local GPU) for a subprocess."""
        self._check()
        return (self.gpus or 1) if self.kind == "k8s" else None

    def run(
        self, context: dg.AssetExecutionContext, command: list[str], env: dict[str, str] | None = None
    ) -> dg.MaterializeResult:
        """Run `command` for the asset in scope; what it reports through Pipes."""
        from training.describe.distributed import PROJECT_ROOT, training_env

        self._check()
        if self.kind == "subprocess":
            client = dg.PipesSubprocessClient()
            invocation = client.run(
                command=command, context=context, env=training_env(env), cwd=str(PROJECT_ROOT)
            )
            return invocation.get_materialize_result()
        from dagster_k8s import PipesK8sClient

        client = PipesK8sClient(
            load_incluster_config=self.load_incluster_config,
            kubeconfig_file=self.kubeconfig_file or None,
        )
        invocation = client.run(
            context=context,
            image=self.image,
            command=command,
            namespace=self.namespace or None,
            env=self.pod_env(env),
            base_pod_spec=self.pod_spec(),
        )
        return invocation.get_materialize_result()

    def pod_env(self, env: dict[str, str] | None = None) -> dict[str, str]:
        forwarded = {name: os.environ[name] for name in self.forward_env if name in os.environ}
        return {**forwarded, **(env or {})}

    def pod_spec(self) -> dict:
        """The base pod spec of a training step: resources, the home volume, the working directory."""
        from training.describe.distributed import PROJECT_ROOT

        self._check()
        home = self.home.home.root
        requests = {key: value for key, value in (("cpu", self.cpu), ("memory", self.memory)) if value}
        limits = {"memory": self.memory} if self.memory else {}
        if self.gpus:
            limits["nvidia.com/gpu"] = str(self.gpus)
        container: dict = {
            "working_dir": str(PROJECT_ROOT),
            "resources": {"requests": requests, "limits": limits},
        }
        spec: dict = {"containers": [container]}
        if self.home_claim:
            container["volume_mounts"] = [{"name": "patentflow-home", "mount_path": str(home)}]
            spec["volumes"] = [
                {"name": "patentflow-home", "persistent_volume_claim": {"claim_name": self.home_claim}}
            ]
        if self.service_account:
            spec["service_account_name"] = self.service_account
        return spec

    def _check(self) -> None:
        if self.kind not in ("subprocess", "k8s"):
            raise ValueError(f"TrainingLauncher.kind {self.kind!r}: subprocess or k8s")
        if self.kind == "k8s" and not self.image:
            raise ValueError("TrainingLauncher(kind='k8s') needs the code location's image")
