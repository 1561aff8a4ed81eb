"""The sweeps of ``conf/sweep/``: each runs exactly the cells of the Makefile line it replaced, and the Makefile
only names them.

A sweep file sets ``hydra.sweeper.params``, which Hydra's basic sweeper puts before the command line and crosses
into jobs; every job then composes ``+sweep=NAME`` again, so the file must add nothing to a job's config but
Hydra's own settings. Jobs are compared in launch order: ``hydra.job.num`` names a cell's directory, so a
sweep re-run into a directory the Makefile line filled resumes it cell for cell.
"""

import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from qexp.cells.cache import cell_key
from tests.conftest import CONF, ROOT

SWEEPS = CONF / "sweep"
CHECKPOINT = ROOT / "qexp" / "assets" / "resnet20_cifar10_jpeg.pt"  # any file: both sides hash the same bytes
FOREIGN = "data/reference-models/resnet20-12fca82f.th"  # make data's copy of akamaster's ResNet20
MACHINE = ["data=cifar10", "data.val_size=0"]  # data=$(DATA) $(CELL_ARGS) where the JPEG mirror is absent

# What each sweep replaced: its Makefile line's overrides between data=$(DATA) and $(CELL_ARGS), with the
# Makefile's default roots (GRID, RECOVERY, QAT, ONNX, FOREIGN_CELLS) and Q = quant=custom_ptq observer=mse written out.
REPLACED = {
    "grid/fp32": "quant=none hydra.sweep.dir=multirun/grid/fp32",
    "grid/torch_int8": "quant=torch_ptq bits=2,4,8 observer=minmax,mse hydra.sweep.dir=multirun/grid/torch_int8",
    "grid/torch_fp16": "quant=torch_ptq bits=16 hydra.sweep.dir=multirun/grid/torch_fp16",
    "grid/torch_pt2e": "quant=torch_ptq quant.flow=pt2e bits=8 observer=minmax,mse "
    "hydra.sweep.dir=multirun/grid/torch_pt2e",
    "grid/custom": "quant=custom_ptq bits=2,4,8,16 observer=minmax,percentile,mse hydra.sweep.dir=multirun/grid/custom",
    "grid/custom_a8": "quant=custom_ptq bits=2,4 quant.a_bits=8 observer=minmax,percentile,mse "
    "hydra.sweep.dir=multirun/grid/custom_a8",
    "grid/custom_fl8": "quant=custom_ptq bits=4 quant.first_last_bits=8 observer=percentile,mse "
    "hydra.sweep.dir=multirun/grid/custom_fl8",
    "grid/custom_a8_fl8": "quant=custom_ptq bits=2 quant.a_bits=8 quant.first_last_bits=8 observer=mse "
    "hydra.sweep.dir=multirun/grid/custom_a8_fl8",
    "recovery/brecq": "quant=custom_ptq observer=mse bits=4,2 quant.a_bits=4 quant.reconstruct=block "
    "hydra.sweep.dir=multirun/recovery/brecq",
    "recovery/w2a4": "quant=custom_ptq observer=mse bits=2 quant.a_bits=4 hydra.sweep.dir=multirun/recovery/w2a4",
    "recovery/cle_bias": "quant=custom_ptq observer=mse bits=4 quant.equalize=false,true "
    "quant.bias_correction=false,true hydra.sweep.dir=multirun/recovery/cle_bias",
    "recovery/mixed": "quant=custom_ptq observer=mse bits=8 quant.average_bits=3,4 "
    "hydra.sweep.dir=multirun/recovery/mixed",
    "recovery/brecq_a2": "quant=custom_ptq observer=mse bits=2 quant.reconstruct=block "
    "hydra.sweep.dir=multirun/recovery/brecq_a2",
    "recovery/brecq_fl8": "quant=custom_ptq observer=mse bits=4,2 quant.a_bits=4 quant.first_last_bits=8 "
    "quant.reconstruct=block hydra.sweep.dir=multirun/recovery/brecq_fl8",
    "recovery/brecq_a2_fl8": "quant=custom_ptq observer=mse bits=2 quant.first_last_bits=8 quant.reconstruct=block "
    "hydra.sweep.dir=multirun/recovery/brecq_a2_fl8",
    "recovery/brecq_steps": "quant=custom_ptq observer=mse bits=2 quant.a_bits=4 quant.reconstruct=block "
    "quant.reconstruction.steps=8000 hydra.sweep.dir=multirun/recovery/brecq_steps",
    "recovery/brecq_steps_fl8": "quant=custom_ptq observer=mse bits=2 quant.a_bits=4,2 quant.first_last_bits=8 "
    "quant.reconstruct=block quant.reconstruction.steps=8000 hydra.sweep.dir=multirun/recovery/brecq_steps_fl8",
    "recovery/mixed_brecq": "quant=custom_ptq observer=mse bits=4 quant.average_bits=2.5,3 quant.reconstruct=block "
    "hydra.sweep.dir=multirun/recovery/mixed_brecq",
    "recovery/adaround": "quant=custom_ptq observer=mse bits=4,2 quant.a_bits=4 quant.reconstruct=layer "
    "quant.reconstruction.drop=0 quant.reconstruction.scale_lr=0 hydra.sweep.dir=multirun/recovery/adaround",
    "recovery/full_grid": "quant=custom_ptq observer=mse bits=2 quant.a_bits=4,2 quant.weight_grid=full "
    "hydra.sweep.dir=multirun/recovery/full_grid",
    "recovery/full_grid_brecq": "quant=custom_ptq observer=mse bits=2 quant.a_bits=4,2 quant.weight_grid=full "
    "quant.reconstruct=block hydra.sweep.dir=multirun/recovery/full_grid_brecq",
    "recovery/per_reader": "quant=custom_ptq observer=mse bits=2,4,8,16 quant.shared_activations=false "
    "hydra.sweep.dir=multirun/recovery/per_reader",
    "seeds/ours": "quant=custom_ptq bits=4,8 observer=minmax,percentile,mse data.calib_seed=1,2 "
    "hydra.sweep.dir=multirun/seeds/ours",
    "seeds/torch_int8": "quant=torch_ptq quant.flow=fx,pt2e bits=8 observer=minmax,mse data.calib_seed=1,2 "
    "hydra.sweep.dir=multirun/seeds/torch_int8",
    "seeds/brecq": "quant=custom_ptq observer=mse bits=4,2 quant.a_bits=4 quant.reconstruct=block data.calib_seed=1,2 "
    "hydra.sweep.dir=multirun/seeds/brecq",
    "qat/w4a4": "quant=qat observer=mse bits=4 hydra.sweep.dir=multirun/qat/w4a4",
    "qat/w2a4": "quant=qat observer=mse bits=2 quant.a_bits=4 hydra.sweep.dir=multirun/qat/w2a4",
    "qat/w2a4_brecq": "quant=qat observer=mse bits=2 quant.a_bits=4 quant.reconstruct=block "
    "hydra.sweep.dir=multirun/qat/w2a4_brecq",
    "qat/w2a2": "quant=qat observer=mse bits=2 quant.a_bits=2 quant.reconstruct=block "
    "hydra.sweep.dir=multirun/qat/w2a2",
    "foreign/a4": f"checkpoint={FOREIGN} data.val_size=0 quant=custom_ptq observer=mse bits=4,2 quant.a_bits=4 "
    "quant.reconstruct=null,block hydra.sweep.dir=multirun/foreign/a4",
    "foreign/w2a2": f"checkpoint={FOREIGN} data.val_size=0 quant=custom_ptq observer=mse bits=2 "
    "quant.reconstruct=null,block hydra.sweep.dir=multirun/foreign/w2a2",
    "onnx/fp32": "quant=none export=onnx hydra.sweep.dir=multirun/onnx/fp32",
    "onnx/custom": "quant=custom_ptq observer=mse bits=2,4,8,16 export=onnx hydra.sweep.dir=multirun/onnx/custom",
    "onnx/custom_minmax": "quant=custom_ptq observer=minmax bits=8 export=onnx "
    "hydra.sweep.dir=multirun/onnx/custom_minmax",
    "onnx/custom_a8": "quant=custom_ptq observer=mse bits=4 quant.a_bits=8 export=onnx "
    "hydra.sweep.dir=multirun/onnx/custom_a8",
    "onnx/per_reader": "quant=custom_ptq observer=mse bits=8 quant.shared_activations=false export=onnx "
    "hydra.sweep.dir=multirun/onnx/per_reader",
    "onnx/brecq": "quant=custom_ptq observer=mse bits=4 quant.reconstruct=block export=onnx "
    "hydra.sweep.dir=multirun/onnx/brecq",
}


@pytest.fixture(scope="module")
def conf() -> Iterator[None]:
    """``compose`` reads ``conf/`` within the tests of this module."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        yield
    GlobalHydra.instance().clear()


def jobs(arguments: list[str]) -> list[list[str]]:
    """The overrides of each job of ``python -m qexp.quantize -m ARGUMENTS``, in launch order: the composed
    ``hydra.sweeper.params`` before the command line, crossed by Hydra's basic sweeper itself."""
    parser = OverridesParser.create()
    fixed = [override.input_line for override in parser.parse_overrides(arguments) if not override.is_sweep_override()]
    params = compose(config_name="quantize", overrides=fixed, return_hydra_config=True).hydra.sweeper.params or {}
    lines = [f"{key}={value}" for key, value in params.items()] + arguments
    (batch,) = BasicSweeper.split_arguments(parser.parse_overrides(lines), max_batch_size=None)
    return batch


def cell(job: list[str]) -> tuple[str, dict, str]:
    """A job's sweep directory, resolved config (what the task receives) and ``cache.cell_key``."""
    cfg = compose(config_name="quantize", overrides=job, return_hydra_config=True)
    sweep_dir = cfg.hydra.sweep.dir
    with open_dict(cfg):
        del cfg["hydra"]
        cfg.output_dir = "cell"  # ${hydra:runtime.output_dir} resolves only inside a run; not part of the key
    return sweep_dir, OmegaConf.to_container(cfg, resolve=True), cell_key(cfg, CHECKPOINT)


def sweep_names() -> list[str]:
    return sorted(path.relative_to(SWEEPS).with_suffix("").as_posix() for path in SWEEPS.rglob("*.yaml"))


@pytest.mark.parametrize("name", sorted(REPLACED))
def test_a_sweep_runs_the_cells_of_the_makefile_line_it_replaced(conf, name):
    before = [cell(job) for job in jobs([MACHINE[0], *REPLACED[name].split(), *MACHINE[1:]])]
    after = [cell(job) for job in jobs([f"+sweep={name}", *MACHINE])]
    assert after == before  # same directory, same resolved config (no key from the sweep file), same cell key
    assert len({key for _, _, key in after}) == len(after)  # and no two jobs of a sweep are one cell


def test_the_jobs_composed_here_are_those_hydras_sweeper_launches(conf, tmp_path: Path):
    """``jobs`` crosses as Hydra does: a real multirun of a sweep of two swept settings, whose task only records
    its overrides (the directory moves to ``tmp_path``: Hydra writes its own files there)."""
    arguments = ["+sweep=recovery/cle_bias", *MACHINE]
    launched = []
    GlobalHydra.instance().hydra.multirun(
        config_name="quantize",
        task_function=lambda cfg: launched.append(list(HydraConfig.get().overrides.task)),
        overrides=[*arguments, f"hydra.sweep.dir={tmp_path}", "hydra/job_logging=none", "hydra/hydra_logging=none"],
        with_log_configuration=False,
    )
    assert launched == jobs(arguments) and len(launched) == 4


def test_the_grid_is_the_31_cells_the_docs_count(conf):
    assert sum(len(jobs([f"+sweep={name}", *MACHINE])) for name in sweep_names() if name.startswith("grid/")) == 31


def test_a_sweep_file_sets_only_hydra_says_what_it_measures_and_lands_in_multirun_by_its_name():
    assert set(REPLACED) <= set(sweep_names())
    for name in sweep_names():
        path = SWEEPS / f"{name}.yaml"
        header, measures = path.read_text().splitlines()[:2]
        assert header == "# @package _global_" and measures.startswith("# "), name
        sweep = OmegaConf.load(path)
        assert list(sweep) == ["hydra"], name  # nothing that would enter a job's config
        assert sweep.hydra.mode == "MULTIRUN" and sweep.hydra.sweep.dir == f"multirun/{name}", name


def make_dry_run(*arguments: str) -> list[list[str]]:
    """The arguments after ``-m`` of each ``qexp.quantize`` command that ``make -n ARGUMENTS`` prints."""
    printed = subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    commands = [shlex.split(line) for line in printed.replace("\\\n", " ").splitlines() if "qexp.quantize" in line]
    return [command[command.index("-m", 2) + 1 :] for command in commands]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_makefile_names_each_sweep_once_with_this_machines_data_and_args():
    # A machine without the JPEG mirror (DATA and VAL as MACHINE), so without its 1 017 original test images either.
    machine = ["MIRROR=/nowhere/cifar10-jpeg.tar.gz", "ORIGINAL=/nowhere/cifar10-original-test-first1017.tar.gz"]
    named = make_dry_run("grid", "recovery", "seeds", "qat", "onnx", "foreign", *machine)  # recovery: make levels too
    names = [args[0].removeprefix("+sweep=") for args in named]
    assert len(set(names)) == len(names) and set(REPLACED) <= set(names) <= set(sweep_names())
    assert all(args[1:] == MACHINE for args in named)  # the command lines that test_a_sweep_runs_... composes
    moved = make_dry_run("grid", "GRID=elsewhere/grid", "ARGS=threads=1", "REDO=1", *machine)
    assert len(moved) == 8
    for sweep, *args in moved:  # a moved root moves every sweep of its family; ARGS and REDO reach every cell
        leaf = sweep.rsplit("/", 1)[1]
        assert args == [
            "data=cifar10",
            "threads=1",
            "data.val_size=0",
            "redo=true",
            f"hydra.sweep.dir=elsewhere/grid/{leaf}",
        ]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_demo_runs_the_main_grid_and_the_study_runs_every_sweep():
    """``make demo`` is the grid's PyTorch-against-ours cells (its 10 minutes), ``make study`` every sweep once."""
    demo = [args[0].removeprefix("+sweep=") for args in make_dry_run("demo")]
    grid = [args[0].removeprefix("+sweep=") for args in make_dry_run("grid")]
    assert demo == ["grid/fp32", "grid/torch_int8", "grid/torch_fp16", "grid/torch_pt2e", "grid/custom"]
    assert grid[: len(demo)] == demo
    assert set(grid) - set(demo) == {"grid/custom_a8", "grid/custom_fl8", "grid/custom_a8_fl8"}
    study = [args[0].removeprefix("+sweep=") for args in make_dry_run("study")]
    assert sorted(study) == sorted(sweep_names())
