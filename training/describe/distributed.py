"""The command that launches `training.describe.train` on every GPU of a machine, or on several nodes.

    deepspeed --num_gpus N --num_nodes 1 --master_port P --module training.describe.train --config run.json
    deepspeed --hostfile hosts --num_nodes 2 ... --module training.describe.train --config run.json   (pdsh/ssh)
    torchrun --nproc_per_node N --nnodes 1 --master_port P -m training.describe.train --config run.json

Both launchers are run as `python -m ...` of the current interpreter, so the command uses the same
virtualenv whatever PATH holds. On a CPU machine one process runs (gloo): the DeepSpeed launcher
accepts `--num_gpus 1` there (its CPU accelerator counts NUMA nodes as devices), so the same command
works on CPU and GPU. The Dagster asset runs this command through `PipesSubprocessClient`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

PROJECT_ROOT = Path(__file__).resolve().parents[2]
TRAIN_MODULE = "training.describe.train"


def local_process_count() -> int:
    """One process per CUDA GPU; one on a CPU machine."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 1


def free_port() -> int:
    """A free TCP port on 127.0.0.1, so that concurrent runs on one machine do not collide on 29500."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_command(
    config_path: Path,
    *,
    nproc_per_node: int | None = None,
    nnodes: int = 1,
    hostfile: Path | None = None,
    launcher: Literal["deepspeed", "torchrun"] = "deepspeed",
    master_port: int | None = None,
    master_addr: str | None = None,
    rdzv_endpoint: str | None = None,
) -> list[str]:
    """argv launching `training.describe.train --config config_path` with `nproc_per_node` processes per node.

    `nproc_per_node` None: every GPU of this machine (1 on CPU). Several nodes: the DeepSpeed
    launcher with a `hostfile` (`host slots=N` lines; it reaches the hosts by pdsh/ssh), or torchrun
    started on each node with the same `rdzv_endpoint` (host:port).
    """
    if nnodes < 1:
        raise ValueError(f"nnodes must be >= 1, got {nnodes}")
    nproc = nproc_per_node if nproc_per_node is not None else local_process_count()
    if nproc < 1:
        raise ValueError(f"nproc_per_node must be >= 1, got {nproc}")
    # One node: any free port, so concurrent runs never collide; several: all must agree on one.
    port = str(master_port if master_port is not None else (free_port() if nnodes == 1 else 29500))
    script = ["--config", str(Path(config_path).resolve())]
    if launcher == "deepspeed":
        command = [sys.executable, "-m", "deepspeed.launcher.runner"]
        if hostfile is not None:
            command += ["--hostfile", str(hostfile)]
        elif nnodes > 1:
            raise ValueError("the deepspeed launcher needs a hostfile for several nodes")
        command += ["--num_nodes", str(nnodes), "--num_gpus", str(nproc), "--master_port", port]
        if master_addr is not None:
            command += ["--master_addr", master_addr]
        return [*command, "--module", TRAIN_MODULE, *script]
    if launcher == "torchrun":
        if hostfile is not None:
            raise ValueError("torchrun takes no hostfile: start it on each node with rdzv_endpoint")
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            str(nproc),
            "--nnodes",
            str(nnodes),
        ]
        if nnodes > 1:
            if rdzv_endpoint is None:
                raise ValueError("torchrun on several nodes needs rdzv_endpoint (host:port)")
            command += ["--rdzv_backend", "c10d", "--rdzv_endpoint", rdzv_endpoint]
        else:
            command += ["--master_addr", master_addr or "127.0.0.1", "--master_port", port]
        return [*command, "-m", TRAIN_MODULE, *script]
    raise ValueError(f"launcher must be 'deepspeed' or 'torchrun', got {launcher!r}")


def training_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for the launched processes: `env` over os.environ, the project importable."""
    merged = {**os.environ, **(env or {})}
    merged["PYTHONPATH"] = os.pathsep.join(p for p in (str(PROJECT_ROOT), merged.get("PYTHONPATH", "")) if p)
    return merged


def run_training(
    config_path: Path, env: Mapping[str, str] | None = None, **launch_options: object
) -> subprocess.CompletedProcess[bytes]:
    """Run a training to completion from the command line; a failed training raises CalledProcessError."""
    command = launch_command(config_path, **launch_options)  # type: ignore[arg-type]
    return subprocess.run(command, env=training_env(env), cwd=PROJECT_ROOT, check=True)
