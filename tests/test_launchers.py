"""Sweeps scale out with Hydra's own launchers: joblib on one machine, submitit for SLURM."""

import json
from pathlib import Path

import pandas as pd
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from tests.conftest import CONF, run_module


def hydra_launcher(overrides: list[str]) -> dict:
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="quantize", overrides=overrides, return_hydra_config=True)
    finally:
        GlobalHydra.instance().clear()
    return cfg.hydra.launcher


def test_parallel_and_slurm_launchers_compose_with_their_settings():
    parallel = hydra_launcher(["hydra/launcher=parallel"])
    assert parallel._target_.endswith("JoblibLauncher") and parallel.n_jobs == 2
    slurm = hydra_launcher(["hydra/launcher=slurm", "hydra.launcher.partition=cpu", "hydra.launcher.mem_gb=4"])
    assert slurm._target_.endswith("SlurmLauncher")
    assert (slurm.partition, slurm.timeout_min, slurm.cpus_per_task, slurm.mem_gb) == ("cpu", 30, 2, 4)


def test_submitit_sweep_runs_cells_as_subprocesses_and_the_report_reads_them(tmp_path: Path, weights_file: Path):
    sweep = tmp_path / "sweep"
    result = run_module(
        "qexp.quantize", "-m", "hydra/launcher=submitit_local", "data=synthetic", f"checkpoint={weights_file}",
        "quant=custom_ptq", "bits=4,8", "threads=1", f"hydra.sweep.dir={sweep}", f"cache_dir={tmp_path}/cache",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    cells = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/result.json"))]
    assert [(c["w_bits"], c["status"]) for c in cells] == [(4, "ok"), (8, "ok")]
    assert list(sweep.glob(".submitit/*/*_result.pkl"))  # submitit ran them as its own jobs
    report = run_module("qexp.report", str(sweep), "--out", str(tmp_path / "report"))
    assert report.returncode == 0, report.stderr[-2000:]
    assert sorted(pd.read_csv(tmp_path / "report" / "results.csv")["w_bits"]) == [4, 8]
