"""The core install (torch, torchvision, numpy, pillow and a few small libraries) trains and predicts on
the offline sample: the pipeline's heavy packages are imported only where they are used."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
import torch
from PIL import Image

from tests.conftest import write_params_file

REPO = Path(__file__).resolve().parents[1]
# Everything the extras add: none of it may be imported by the core's commands.
NOT_CORE = (
    *("mlflow", "prefect", "dvc", "boto3", "botocore", "requests", "gdown", "s3fs", "sqlalchemy", "filelock"),
    *("numba", "llvmlite"),  # the `fast` extra: scoring falls back to numpy's passes
)
# `salgan ...` with the packages above made unimportable, as in an environment that lacks them.
CORE_ONLY = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {NOT_CORE!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}} (not part of the core install)", name=name)

sys.meta_path.insert(0, NotInstalled())
from salgan.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_the_core_dependencies_are_only_the_small_set():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {dep.split(">")[0].split("<")[0].split("=")[0].split("[")[0] for dep in project["dependencies"]}
    small = {"scipy", "pyyaml", "pydantic", "tqdm", "threadpoolctl", "matplotlib"}
    assert names == {"torch", "torchvision", "numpy", "pillow"} | small
    assert not any("==" in dep for extra in project["optional-dependencies"].values() for dep in extra)


@pytest.mark.slow
def test_the_core_alone_downloads_prepares_trains_scores_and_predicts_the_offline_sample(tmp_path):
    params = write_params_file(
        tmp_path / "params.yaml",
        {
            "download": {"output": "raw", "sample_train": 16, "sample_val": 4, "sample_test": 2},
            "prepare": {"input": "raw", "output": "prepared", "size": [64, 48], "workers": 1},
            "model": {"width": 0.0625},
            "train": {
                "data": "prepared",
                "output": "models",
                "epochs": 2,
                "bce_epochs": 1,
                "batch_size": 8,
                "nproc": 1,
            },
            "mlflow": {"enabled": True},  # enabled but not installed: training goes on without it
        },
    )
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}

    def salgan(*args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-c", CORE_ONLY, *args], cwd=tmp_path, env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, f"salgan {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result.stdout

    salgan("download", "--params", str(params))
    salgan("prepare", "--params", str(params))
    assert "wrote models/generator.pt" in salgan("train", "--params", str(params))
    assert torch.load(tmp_path / "models" / "generator.pt", weights_only=True)["encoder.0.weight"].shape[0] == 4
    assert "nss" in salgan("evaluate", "--params", str(params))  # scored; MLflow absent, nothing recorded
    assert "wrote 2 maps" in salgan("predict", "--params", str(params))
    photos = tmp_path / "raw" / "images" / "test"
    salgan("predict", "--model", "models/generator.pt", "--output", "maps", str(photos))
    maps = sorted((tmp_path / "maps").glob("*.png"))
    assert len(maps) == 2 and all(Image.open(m).size == (640, 480) for m in maps)
