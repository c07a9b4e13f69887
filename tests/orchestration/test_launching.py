"""Training steps on Kubernetes by configuration: the pods that dagster-k8s builds for them (no
cluster runs here), and the definitions loading with that launcher."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import pytest
from dagster_k8s.pipes import build_pod_body

from orchestration.definitions import build_definitions
from orchestration.resources import PatentflowHome, TrainingLauncher
from training import entry
from training.describe import distributed

HOME = "/srv/patentflow"


def _launcher(**settings) -> TrainingLauncher:
    base = {"kind": "k8s", "image": "registry.example/patentflow:2026.12", "home": PatentflowHome(root=HOME)}
    return TrainingLauncher(**{**base, **settings})


def test_a_training_step_pod_runs_the_same_command_with_gpus_and_the_home_volume(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.patentflow:5000")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not for the pod")
    launcher = _launcher(
        gpus=8, cpu="32", memory="240Gi", home_claim="patentflow-home", service_account="train"
    )
    config = Path(HOME) / "store" / "runs" / "patentlmm_stage2" / "abcd1234" / "full" / "train_config.json"
    command = distributed.launch_command(config, nproc_per_node=launcher.processes())
    pod = build_pod_body(
        "stage2", launcher.image, command, launcher.pod_env({"EXTRA": "1"}), None, launcher.pod_spec()
    )

    [container] = pod.spec.containers
    assert container.image == "registry.example/patentflow:2026.12" and container.command == command
    assert command[command.index("--num_gpus") + 1] == "8"  # one DeepSpeed process per GPU of the pod
    assert container.working_dir == str(distributed.PROJECT_ROOT)
    env = {item.name: item.value for item in container.env}
    assert env["MLFLOW_TRACKING_URI"] == "http://mlflow.patentflow:5000" and env["EXTRA"] == "1"
    assert "AWS_SECRET_ACCESS_KEY" not in env and "PATH" not in env  # only what forward_env names
    assert container.resources.limits == {"memory": "240Gi", "nvidia.com/gpu": "8"}
    assert container.resources.requests == {"cpu": "32", "memory": "240Gi"}
    [mount] = container.volume_mounts
    [volume] = pod.spec.volumes
    assert mount.mount_path == HOME and volume.persistent_volume_claim.claim_name == "patentflow-home"
    assert mount.name == volume.name
    assert pod.spec.restart_policy == "Never" and pod.spec.service_account_name == "train"


def test_a_job_pod_without_gpus_asks_for_none(monkeypatch: pytest.MonkeyPatch) -> None:
    launcher = _launcher()
    command = entry.command_line("evaluate", Path(HOME) / "job.json")
    pod = build_pod_body("evaluate", launcher.image, command, launcher.pod_env(), None, launcher.pod_spec())
    [container] = pod.spec.containers
    assert container.command == command and not container.resources.limits and not pod.spec.volumes
    assert launcher.processes() == 1 and TrainingLauncher(home=PatentflowHome(root=HOME)).processes() is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"kind": "slurm"}, "kind 'slurm': subprocess or k8s"),
        ({"image": ""}, "needs the code location's image"),
    ],
)
def test_a_bad_launcher_is_refused_before_any_pod(settings: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        _launcher(**settings).pod_spec()


def test_the_definitions_load_with_the_kubernetes_launcher_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name, value in {
        "PATENTFLOW_LAUNCHER": "k8s",
        "PATENTFLOW_IMAGE": "registry.example/patentflow:2026.12",
        "PATENTFLOW_TRAINING_GPUS": "8",
        "PATENTFLOW_HOME_CLAIM": "patentflow-home",
    }.items():
        monkeypatch.setenv(name, value)
    defs = build_definitions(home=PatentflowHome(root=HOME))
    dg.Definitions.validate_loadable(defs)
    assert "launcher" in defs.resolve_job_def("retrain_patentlmm").resource_defs
    launcher = defs.resources["launcher"]
    assert (launcher.kind, launcher.gpus, launcher.processes()) == ("k8s", 8, 8)
    assert launcher.pod_spec()["volumes"][0]["persistent_volume_claim"]["claim_name"] == "patentflow-home"


def test_the_helm_values_configure_this_launcher_and_this_image() -> None:
    import yaml

    from tests.conftest import PROJECT

    values = yaml.safe_load((PROJECT / "deploy" / "helm-values.yaml").read_text())
    [deployment] = values["dagster-user-deployments"]["deployments"]
    image = f"{deployment['image']['repository']}:{deployment['image']['tag']}"
    with pytest.MonkeyPatch.context() as env:
        for name, value in deployment["env"].items():
            env.setenv(name, str(value))
        launcher = TrainingLauncher.from_environment(
            PatentflowHome(root=deployment["env"]["PATENTFLOW_HOME"])
        )
    assert (launcher.kind, launcher.image, launcher.processes()) == ("k8s", image, 8)
    [mount] = deployment["volumeMounts"]
    assert launcher.pod_spec()["containers"][0]["volume_mounts"][0]["mount_path"] == mount["mountPath"]
    assert deployment["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher" and not values["postgresql"]["enabled"]
    dockerfile = (PROJECT / "deploy" / "Dockerfile").read_text()
    assert (
        '"-m", "orchestration.definitions"]' in dockerfile
        and f"PATENTFLOW_HOME={mount['mountPath']}" in dockerfile
    )
