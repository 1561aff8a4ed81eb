"""Sweeps scale out with Hydra's own launchers: joblib on one machine, submitit for SLURM."""

import json
from pathlib import Path

import pandas as pd
import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from qexp.cells.cache import cell_key
from tests.conftest import CONF, compose_config, run_module


def hydra_launcher(overrides: list[str]) -> dict:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="quantize", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    return cfg.hydra.launcher


def launcher_file(name: str) -> dict:
    """What ``conf/hydra/launcher/<name>.yaml`` sets itself, less its defaults list."""
    settings = OmegaConf.to_container(OmegaConf.load(CONF / "hydra" / "launcher" / f"{name}.yaml"))
    settings.pop("defaults")
    return settings


@pytest.mark.parametrize(
    ("name", "target", "overrides"),
    [
        ("parallel", "JoblibLauncher", {}),
        ("slurm", "SlurmLauncher", {"partition": "cpu", "mem_gb": 4}),  # the partition is the user's to give
    ],
)
def test_parallel_and_slurm_launchers_compose_with_their_settings(name, target, overrides):
    launcher = hydra_launcher([f"hydra/launcher={name}", *(f"hydra.launcher.{k}={v}" for k, v in overrides.items())])
    assert launcher._target_.endswith(target)
    expected = {**launcher_file(name), **overrides}
    assert {key: launcher[key] for key in expected} == expected


@pytest.mark.slow
def test_submitit_sweep_runs_cells_as_subprocesses_and_the_report_reads_them(tmp_path: Path, weights_file: Path):
    sweep = tmp_path / "sweep"
    cell = ["data=synthetic", f"checkpoint={weights_file}", "quant=custom_ptq", "threads=1"]
    result = run_module(
        "qexp.quantize", "-m", "hydra/launcher=submitit_local", *cell, "bits=4,8", f"hydra.sweep.dir={sweep}",
        f"cache_dir={tmp_path}/cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    cells = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert [(c["w_bits"], c["status"]) for c in cells] == [(4, "ok"), (8, "ok")]
    assert list(sweep.glob(".submitit/*/*_result.pkl"))  # submitit ran them as its own jobs
    # Each job ran the cell its overrides name: the same content hash as that cell composed here.
    for bits, ran in zip((4, 8), cells, strict=True):
        assert ran["cell_key"] == cell_key(compose_config("quantize", [*cell, f"bits={bits}"], tmp_path), weights_file)
    report = run_module("qexp.report", str(sweep), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    table = pd.read_csv(tmp_path / "report" / "results.csv").sort_values("w_bits")
    assert table["top1"].tolist() == [c["top1"] for c in cells]  # the report reads the cells' numbers
