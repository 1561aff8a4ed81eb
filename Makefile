# Two commands on a fresh machine with Python 3.11:  make demo  (the main job)  and  make test.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# torch and torchvision are installed as a tested pair; override for another platform.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
# The JPEG mirror of CIFAR-10 when it is next to the checkout, else torchvision's download.
MIRROR := ../shared/data/cifar10-jpeg.tar.gz
DATA ?= $(if $(wildcard $(MIRROR)),cifar10_folder,cifar10)
# The first 1 017 ORIGINAL test images, measured beside the mirror's test split when they are here.
ORIGINAL := ../shared/data/cifar10-original-test-first1017.tar.gz
EXTRA_TEST := $(if $(wildcard $(ORIGINAL)),data.extra_test_root=data/cifar10-original-test,)
GRID ?= multirun/grid
RECOVERY ?= multirun/recovery
REPORT ?= multirun_reports/resnet20_ptq
# Extra overrides for every grid cell, e.g. ARGS=threads=1 while another job uses a core.
ARGS ?=
# The shipped checkpoint's held-out split exists only in the mirror's order: on torchvision's copy
# nothing is validated (qexp.cells.weights.check_held_out).
VAL := $(if $(wildcard $(MIRROR)),,data.val_size=0)
CELL_ARGS := $(strip $(ARGS) $(VAL) $(EXTRA_TEST) $(if $(REDO),redo=true,))

.PHONY: venv data test demo study grid grid-main recovery levels seeds anatomy qat onnx report foreign teacher train train-distilled proxies lint

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $@

venv: $(VENV)/.installed

data/cifar10-jpeg/train:
	@if [ -f $(MIRROR) ]; then mkdir -p data/cifar10-jpeg && tar -xzf $(MIRROR) -C data/cifar10-jpeg; fi

data/cifar10-original-test/test:
	@if [ -f $(ORIGINAL) ]; then mkdir -p data/cifar10-original-test && tar -xzf $(ORIGINAL) -C data/cifar10-original-test; fi

# A public ResNet20 trained elsewhere (akamaster/pytorch_resnet_cifar10, on the original CIFAR-10), with the
# side file that says how to feed it (qexp/assets/foreign/): from ../shared when it is there, else from GitHub.
FOREIGN := data/reference-models/resnet20-12fca82f.th
FOREIGN_SHARED := ../shared/reference-models/resnet20-12fca82f.th
FOREIGN_URL := https://github.com/akamaster/pytorch_resnet_cifar10/raw/master/pretrained_models/resnet20-12fca82f.th
$(FOREIGN): qexp/assets/foreign/resnet20-12fca82f.th.json
	@mkdir -p $(@D)
	@cp $< $@.json
	@if [ -f $(FOREIGN_SHARED) ]; then cp $(FOREIGN_SHARED) $@; \
	elif curl -fsSL $(FOREIGN_URL) -o $@.part; then mv $@.part $@; \
	else rm -f $@.part; echo "no $(FOREIGN): neither $(FOREIGN_SHARED) nor $(FOREIGN_URL) could be read"; fi

data: data/cifar10-jpeg/train data/cifar10-original-test/test $(FOREIGN)

test: venv
	$(PY) -m pytest -m "not slow" -q

# The main job, within 10 minutes on a 2-core CPU: FP32, PyTorch's PTQ and ours at 16, 8, 4 and 2 bits with each
# observer (22 cells of the grid; 8 minutes on the 2-core AMD EPYC with AVX512-BF16), merged into the committed
# report. The grid's 9 variant cells (W4A8 and W2A8, an 8-bit stem and classifier) are make grid's; every cell
# of the study is make study's.
demo: venv data
	$(MAKE) grid-main report

# Everything the README's tables and figures come from, one target after the other (about 9 hours on the
# 2-core EPYC, added up from the cells' seconds).
study: venv data
	$(MAKE) grid recovery seeds qat onnx foreign anatomy report

# $(call sweep,FAMILY/NAME,ROOT): python -m qexp.quantize -m +sweep=FAMILY/NAME, the sweep conf/sweep/FAMILY/NAME.yaml
# (docs/sweeps.md), on this machine's copy of CIFAR-10 (and its first 1 017 original test images where they are here)
# and with ARGS and REDO on every cell. Its cells land where the file says, multirun/FAMILY/NAME, unless ROOT (GRID,
# RECOVERY, SEEDS, QAT, ONNX or FOREIGN_CELLS) was moved: then in ROOT/NAME.
moved_dir = $(if $(filter multirun/$(1),$(2)/$(notdir $(1))),, hydra.sweep.dir=$(2)/$(notdir $(1)))
sweep = $(PY) -m qexp.quantize -m +sweep=$(1) data=$(DATA) $(CELL_ARGS)$(call moved_dir,$(1),$(2))

# The full comparison grid on the shipped checkpoint (31 cells, 27 evaluated on the whole test split; 628 s from
# scratch on an idle 2-core Intel Xeon with AMX): grid-main's 22 cells, then the 9 variants.
# Re-running resumes: cells already ok for the same config and checkpoint are skipped, stale or
# failed ones are redone (REDO=1 recomputes everything).
grid-main:
	$(call sweep,grid/fp32,$(GRID))
	$(call sweep,grid/torch_int8,$(GRID))
	$(call sweep,grid/torch_fp16,$(GRID))
	$(call sweep,grid/torch_pt2e,$(GRID))
	$(call sweep,grid/custom,$(GRID))

grid: grid-main
	$(call sweep,grid/custom_a8,$(GRID))
	$(call sweep,grid/custom_fl8,$(GRID))
	$(call sweep,grid/custom_a8_fl8,$(GRID))

# Beyond round-to-nearest (docs/recovery.md): per-layer sensitivity, learned rounding for the W4A4 and W2A4 goals
# (about 10 minutes a cell on the 2-core Xeon), equalization, bias correction, mixed precision, W2A2, BRECQ with an
# 8-bit stem and classifier, with 8 000 steps a unit (about 30 minutes a cell: at W2A4, and with an 8-bit stem and
# classifier at W2A4 and W2A2) and on mixed-precision models of 2.5 and 3 bits a weight, then AdaRound per layer.
# Results land beside the grid's and in the same report.
recovery: venv data
	$(PY) -m qexp.sensitivity data=$(DATA) bits=[4,2] hydra.run.dir=$(RECOVERY)/sensitivity $(ARGS) $(VAL)
	$(call sweep,recovery/brecq,$(RECOVERY))
	$(call sweep,recovery/w2a4,$(RECOVERY))
	$(call sweep,recovery/cle_bias,$(RECOVERY))
	$(call sweep,recovery/mixed,$(RECOVERY))
	$(call sweep,recovery/brecq_a2,$(RECOVERY))
	$(call sweep,recovery/brecq_fl8,$(RECOVERY))
	$(call sweep,recovery/brecq_a2_fl8,$(RECOVERY))
	$(call sweep,recovery/brecq_steps,$(RECOVERY))
	$(call sweep,recovery/brecq_steps_fl8,$(RECOVERY))
	$(call sweep,recovery/mixed_brecq,$(RECOVERY))
	$(call sweep,recovery/adaround,$(RECOVERY))
	$(call sweep,recovery/per_reader,$(RECOVERY))
	$(MAKE) levels report

# The fourth 2-bit weight level (quant.weight_grid=full): round-to-nearest, and BRECQ fitted as the
# narrow-grid BRECQ cells of recovery/brecq and brecq_a2 are (1/8 of the images held out), so the two compare.
levels: venv data
	$(call sweep,recovery/full_grid,$(RECOVERY))
	$(call sweep,recovery/full_grid_brecq,$(RECOVERY))

# The cells the conclusions rest on, calibrated on two more draws of 1 024 training images (data.calib_seed=1,2;
# the default draw is the grid's and recovery's): ours W8A8 and W4A4 with each observer, PyTorch's int8 FX and
# pt2e, and block reconstruction at W4A4 and W2A4 (about 10 minutes a cell on the 2-core Xeon). The report sets
# the draws' mean ± standard deviation beside each cell.
SEEDS ?= multirun/seeds
seeds: venv data
	$(call sweep,seeds/ours,$(SEEDS))
	$(call sweep,seeds/torch_int8,$(SEEDS))
	$(call sweep,seeds/brecq,$(SEEDS))
	$(MAKE) report

# Why 4 and 2 bits fail (docs/recovery.md#why-4-and-2-bits-fail-the-anatomy-figure): each observer's grids on the
# stem, an insensitive layer and one activation, and each layer's output SQNR for round-to-nearest and for the
# BRECQ and QAT cells of W4A4 and W2A4 that kept their model here (the first cells of recovery/brecq and of
# qat/w4a4, qat/w2a4, qat/w2a4_brecq; a cell without its quantized_model.pt is left out).
comma := ,
empty :=
space := $(empty) $(empty)
ANATOMY_CELLS = $(patsubst %/quantized_model.pt,%,$(wildcard $(addsuffix /quantized_model.pt,\
	$(RECOVERY)/brecq/0 $(RECOVERY)/brecq/1 $(QAT)/w4a4/0 $(QAT)/w2a4/0 $(QAT)/w2a4_brecq/0)))
anatomy: venv data
	$(PY) -m qexp.anatomy "cells=[$(subst $(space),$(comma),$(strip $(ANATOMY_CELLS)))]" output_dir=$(REPORT)/anatomy

# Quantization-aware training from our W4A4 and W2A4 round-to-nearest models and from the W2A4 and W2A2 BRECQ
# models (15 epochs; 34, 35, 41 and 46 minutes on the 2-core AMD EPYC with AVX512-BF16; docs/qat.md),
# in the same report.
QAT ?= multirun/qat
qat: venv data
	$(call sweep,qat/w4a4,$(QAT))
	$(call sweep,qat/w2a4,$(QAT))
	$(call sweep,qat/w2a4_brecq,$(QAT))
	$(call sweep,qat/w2a2,$(QAT))
	$(MAKE) report

# Our models as ONNX QDQ graphs on ONNX Runtime (export=onnx): FP32, round-to-nearest at every width (shared grids,
# as the grid's cells: the layout that runs on integer kernels end to end, and W8A8 with a grid per reader), and
# the BRECQ W4A4 model (as recovery/brecq fits it). About 15 minutes on the 2-core Xeon, then the report.
ONNX ?= multirun/onnx
onnx: venv data
	$(call sweep,onnx/fp32,$(ONNX))
	$(call sweep,onnx/custom,$(ONNX))
	$(call sweep,onnx/custom_minmax,$(ONNX))
	$(call sweep,onnx/custom_a8,$(ONNX))
	$(call sweep,onnx/per_reader,$(ONNX))
	$(call sweep,onnx/brecq,$(ONNX))
	$(MAKE) report

# The sweeps' cells merged into the committed report: a re-run cell replaces its committed twin, every
# other committed cell stays (a report of the sweeps alone would drop them). The README's and docs' generated
# tables follow, with the narrow network's headline numbers (its committed cells, NARROW) beside the new ones, and
# the recipes' cells on akamaster's ResNet20 (make foreign's report) beside ours.
NARROW := multirun_reports/resnet20_narrow/results.csv
report:
	$(PY) -m qexp.report $(if $(wildcard $(REPORT)/results.csv),--from-csv $(REPORT)/results.csv,) \
		$(wildcard $(GRID) $(RECOVERY) $(QAT) $(ONNX) $(SEEDS)) --out $(REPORT) --readme README.md docs --baseline $(NARROW) \
		$(if $(wildcard $(FOREIGN_REPORT)/results.csv),--foreign $(FOREIGN_REPORT)/results.csv,)

# The W4A4, W2A4 and W2A2 recipes, round to nearest and BRECQ, run unchanged on akamaster's ResNet20 (FOREIGN, a
# model they were not tuned on; 6 cells, about 35 minutes on the 2-core AMD EPYC), scored on the first 1 017
# original test images too where they are here. Its own report: the study's report takes one checkpoint's cells.
FOREIGN_CELLS ?= multirun/foreign
FOREIGN_REPORT ?= multirun_reports/foreign_resnet20
foreign: venv data
	$(call sweep,foreign/a4,$(FOREIGN_CELLS))
	$(call sweep,foreign/w2a2,$(FOREIGN_CELLS))
	$(PY) -m qexp.report $(if $(wildcard $(FOREIGN_REPORT)/results.csv),--from-csv $(FOREIGN_REPORT)/results.csv,) \
		$(FOREIGN_CELLS) --out $(FOREIGN_REPORT)

# The reference recipe on the full-width ResNet20 (conf/experiment/final.yaml, 200 epochs -> outputs/final,
# the shipped checkpoint; resumes an interrupted run), the same recipe distilled from the teacher
# (conf/experiment/final_distill.yaml -> outputs/final-distill, the candidate to replace it), and the teacher.
# All train on the JPEG mirror (data.root); elsewhere add data=cifar10 to the command (docs/training.md).
train: venv data
	$(PY) -m qexp.train experiment=final $(EXTRA_TEST)

train-distilled: venv data
	$(PY) -m qexp.train experiment=final_distill $(EXTRA_TEST)

teacher: venv data
	$(PY) -m qexp.train experiment=teacher $(EXTRA_TEST)

# Proxy runs that compared recipes (on the narrow network, docs/training.md): 15 epochs on 45 000
# images, scored on the 5 000 held-out ones, and plain training for 25 epochs, the same time as 15
# distilled ones; the table lands in reports/recipes/ (test accuracy is not in it).
PROXY := $(PY) -m qexp.train $(EXTRA_TEST)
PLAIN := data=cifar10_folder trainer=full optim.label_smoothing=0 optim.ema_decay=0.999
proxies: venv data
	$(PROXY) $(PLAIN) trainer.max_epochs=15 hydra.run.dir=outputs/proxies/plain
	$(PROXY) experiment=distill teacher.checkpoint=outputs/teacher/weights.pt trainer.max_epochs=15 \
		hydra.run.dir=outputs/proxies/distill
	$(PROXY) $(PLAIN) trainer.max_epochs=25 hydra.run.dir=outputs/proxies/plain-25
	$(PY) -m qexp.report.recipes outputs/teacher/weights.pt outputs/proxies/*/weights.pt \
		$(wildcard outputs/final/weights.pt outputs/narrow-300/weights.pt outputs/reference/weights.pt) --out reports/recipes --readme docs/training.md

lint: venv
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .
