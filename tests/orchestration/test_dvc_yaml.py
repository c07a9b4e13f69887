"""dvc.yaml offers the data steps to `dvc repro` users without a second copy of the logic."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from tests.conftest import PROJECT


def test_every_dvc_stage_calls_the_patentflow_cli() -> None:
    stages = yaml.safe_load((PROJECT / "dvc.yaml").read_text())["stages"]
    assert stages
    for name, stage in stages.items():
        assert stage["cmd"].startswith("patentflow "), f"stage {name} must call the CLI, not hold logic"
    dvc = Path(sys.executable).with_name("dvc")
    listed = subprocess.run(
        [str(dvc), "stage", "list"],
        cwd=PROJECT,
        capture_output=True,
        text=True,
        env=os.environ | {"DVC_NO_ANALYTICS": "1"},
        check=True,
    )
    assert set(stages) <= {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
