"""A cell's ``result.json``: one typed record that every path of ``python -m qexp.quantize`` fills.

``Result`` holds every field in the order it is written, each with its type and a one-line
meaning. What only some methods measure are records of their own, which those paths return:
``Pt2eFields`` and ``QATFields`` from the quantization API (``Quantized.method_fields``),
``OnnxExport`` or ``OnnxUnsupported`` from ``export=onnx`` (``qexp.quant.export.deploy.export_fields``). ``to_dict``
writes them flat, in place. A field is null when it does not apply to the cell (``flow`` of our
PTQ) and left out of the file (``ABSENT``) when the cell never measured it: a cell that failed
before evaluating, a split the data lacks, a method that does not have it. That is how every
committed cell was written, so the report reads old and new files alike.

The tables of docs/result-schema.md are generated from here (``python -m qexp.cells.result
docs/result-schema.md`` refills them; a test checks they are current). ``RESULT_SCHEMA`` is the
version ``cache.cell_key`` hashes.
"""

from __future__ import annotations

import dataclasses
import enum
import re
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, NamedTuple

# Raised when result.json gains a measurement every cell must have (2: validation top-1), so that a
# resumed sweep redoes the cells written without it instead of keeping them.
RESULT_SCHEMA = 2
# Beside a cell's result.json: its quantized model's state_dict (our PTQ and QAT), so a figure can measure
# it later without making it again (a BRECQ cell takes minutes, a QAT cell hours): qexp.report.anatomy.
QUANTIZED_MODEL = "quantized_model.pt"


class Group(enum.Enum):
    """The tables of docs/result-schema.md (its ``<!-- fields:NAME -->`` blocks), in the order the page shows them."""

    CELL = "cell"
    OUTCOME = "outcome"
    ACCURACY = "accuracy"
    SIZE = "size"
    PT2E = "pt2e"
    QAT = "qat"
    ONNX = "onnx"
    PROVENANCE = "provenance"


class Doc(NamedTuple):
    """A field's table in docs/result-schema.md and its one-line meaning (Markdown), carried in its type."""

    group: Group
    meaning: str


class Absent(enum.Enum):
    """The value of a field the cell did not measure: ``to_dict`` leaves it out of ``result.json``."""

    ABSENT = "absent"

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = Absent.ABSENT


@dataclass(frozen=True, kw_only=True)
class Pt2eFields:
    """What PyTorch's pt2e flow measures besides the lowered model's top-1."""

    export_calibrate_convert_seconds: Annotated[float, Doc(Group.PT2E, "`torch.export` + calibration + `convert_pt2e`")]
    compile_seconds: Annotated[float, Doc(Group.PT2E, "lowering with `torch.compile`")]
    pt2e_reference_top1: Annotated[
        float, Doc(Group.PT2E, "the reference (quantize/dequantize) graph's test top-1; `top1` is the lowered model's")
    ]


@dataclass(frozen=True, kw_only=True)
class QATFields:
    """How a QAT cell's fine-tuning went."""

    qat_epochs: Annotated[int, Doc(Group.QAT, "epochs trained")]
    qat_seconds: Annotated[float, Doc(Group.QAT, "training time, across resumed runs")]
    qat_chosen_epoch: Annotated[int, Doc(Group.QAT, "the epoch kept")]
    qat_val_top1: Annotated[
        float | None,
        Doc(
            Group.QAT,
            "its validation top-1, in fp32 (older cells, those without `qat_start_val_top1`, validated at the "
            "training precision); null without a validation split",
        ),
    ]
    qat_val_history: Annotated[list[float], Doc(Group.QAT, "validation top-1 of every epoch, the same way")]
    # Absent from the cells written before they existed (their validation ran at the training precision). Only QAT
    # cells have them, so RESULT_SCHEMA stays: an older QAT cell is still a finished cell, not one to redo.
    qat_start_val_top1: Annotated[
        float | Absent | None,
        Doc(
            Group.QAT,
            "validation top-1 (fp32) of the model QAT started from (epoch 0: our PTQ model, after "
            "`quant.reconstruct` when set); null without a validation split",
        ),
    ] = ABSENT
    qat_still_rising: Annotated[
        bool | Absent | None,
        Doc(
            Group.QAT,
            "true: the last epoch was the best (with one epoch: beat the start), so more epochs may help; null "
            "without a validation split",
        ),
    ] = ABSENT


ONNX_STATUS = Doc(Group.ONNX, "`ok` or `unsupported` (the cell itself stays `ok`)")


@dataclass(frozen=True, kw_only=True)
class OnnxUnsupported:
    """``export=onnx`` of a model ONNX cannot carry, and why; the cell itself stays ok."""

    onnx_status: Annotated[str, ONNX_STATUS] = "unsupported"
    onnx_reason: Annotated[str, Doc(Group.ONNX, "why not, when `unsupported`")]


@dataclass(frozen=True, kw_only=True)
class OnnxExport:
    """``export=onnx``: the exported graph on ONNX Runtime beside our simulation (agreement, kernels, latency)."""

    onnx_status: Annotated[str, ONNX_STATUS] = "ok"
    onnx_note: Annotated[
        str | None,
        Doc(Group.ONNX, "how ONNX Runtime had to be run, when it matters (e.g. QDQ fusion off for 2-bit graphs)"),
    ]
    onnx_file: Annotated[str, Doc(Group.ONNX, "`model.onnx`, beside `result.json`")]
    onnx_opset: Annotated[int, Doc(Group.ONNX, "the opset the graph declares")]
    onnx_bytes: Annotated[int, Doc(Group.ONNX, "the file's size")]
    onnx_top1: Annotated[float, Doc(Group.ONNX, "ONNX Runtime's test top-1")]
    onnx_agreement: Annotated[float, Doc(Group.ONNX, "% of test images ONNX Runtime classifies as our simulation does")]
    onnx_logits_max_diff: Annotated[float, Doc(Group.ONNX, "the largest difference between its logits and ours")]
    onnx_kernels: Annotated[
        dict[str, int], Doc(Group.ONNX, "the operators of the graph ONNX Runtime runs after fusing it, by count")
    ]
    onnx_integer_kernels: Annotated[int, Doc(Group.ONNX, "how many of them compute on integers")]
    onnx_ms_batch1: Annotated[float, Doc(Group.ONNX, "latency in ms at batch 1")]
    onnx_ms_batch256: Annotated[float, Doc(Group.ONNX, "latency in ms at batch 256")]
    onnx_fp32_ms_batch1: Annotated[
        float, Doc(Group.ONNX, "the same for ONNX Runtime fp32 of the float model (BatchNorm folded), at batch 1")
    ]
    onnx_fp32_ms_batch256: Annotated[
        float, Doc(Group.ONNX, "the same for ONNX Runtime fp32 of the float model (BatchNorm folded), at batch 256")
    ]
    onnx_threads: Annotated[int, Doc(Group.ONNX, "threads the latency was measured with (1)")]
    onnx_seconds: Annotated[
        float, Doc(Group.ONNX, "writing, running and timing the graph (not in the cell's `seconds`)")
    ]


@dataclass(kw_only=True)
class Result:
    """One cell's ``result.json``, field by field in the order it is written; filled as the cell runs.

    Constructed with what the cell is (its settings, checkpoint and data) and ``status`` failed;
    ``qexp.quantize.run`` fills in what it measures and sets ``status`` last.
    """

    quant: Annotated[str, Doc(Group.CELL, "the method: `none` (FP32), `custom_ptq`, `torch_ptq`, `qat`")]
    bits: Annotated[int, Doc(Group.CELL, "the `bits` value (32 for FP32)")]
    w_bits: Annotated[int, Doc(Group.CELL, "weight bit width")]
    a_bits: Annotated[int, Doc(Group.CELL, "activation bit width")]
    observer: Annotated[
        str, Doc(Group.CELL, "`minmax`, `percentile`, `mse`; `none` when nothing is observed (FP32, the float16 cast)")
    ]
    granularity: Annotated[str, Doc(Group.CELL, "of the weights: `per_channel` or `per_tensor`; `none` for FP32")]
    first_last_bits: Annotated[
        int | None, Doc(Group.CELL, "the width of the first conv and the classifier when it differs from `w_bits`")
    ]
    flow: Annotated[str | None, Doc(Group.CELL, "PyTorch's flow: `fx` or `pt2e`")]
    recovery: Annotated[
        str | None,
        Doc(
            Group.CELL,
            "what is added to round-to-nearest, e.g. `CLE + BRECQ+LSQ+QDrop 2000 steps + bias corr.` "
            "([recovery.md](recovery.md))",
        ),
    ]
    average_bits: Annotated[float | None, Doc(Group.CELL, "the mixed-precision budget in bits per weight")]
    shared_activations: Annotated[
        bool | None,
        Doc(
            Group.CELL,
            "true: one activation grid per tensor (the default); false: one per reader; null: not our grids "
            "([methods.md](methods.md#one-grid-per-reader-or-shared-grids))",
        ),
    ]
    weight_grid: Annotated[
        str | None, Doc(Group.CELL, "`full` for the full signed weight range; null for the narrow one")
    ]
    export: Annotated[str | None, Doc(Group.CELL, "`onnx` when the cell also exported its model")]
    calib_seed: Annotated[
        int | None,
        Doc(
            Group.CELL,
            "`data.calib_seed`: which draw of calibration images from the training split; null: the first "
            "`calib_size` of its order, the draw every table shows (the others give the spread)",
        ),
    ] = None
    status: Annotated[str, Doc(Group.OUTCOME, "`ok`, `unsupported` (a cell the method cannot do) or `failed`")] = (
        "failed"
    )
    reason: Annotated[
        str,
        Doc(Group.OUTCOME, "why it is not `ok`; for an `ok` cell, the method's note (e.g. which QAT epoch was kept)"),
    ] = ""
    user_error: Annotated[
        bool,
        Doc(
            Group.OUTCOME,
            "true: `reason` is about the user's input (bits outside 2–16, an unknown observer or export, a missing, "
            "corrupt or foreign checkpoint, an empty calibration set, a validation split the checkpoint trained on); "
            "false: a fault, with its traceback in the log",
        ),
    ] = False
    top1: Annotated[float | None, Doc(Group.ACCURACY, "the quantized model on the test split")] = None
    fp32_top1: Annotated[
        float | None,
        Doc(
            Group.ACCURACY,
            "the float model on the same split, measured once per checkpoint and cached (`outputs/cache/`)",
        ),
    ] = None
    size_bytes: Annotated[int | None, Doc(Group.SIZE, "`torch.save` bytes of what would be deployed")] = None
    fp32_size_bytes: Annotated[int | None, Doc(Group.SIZE, "`torch.save` bytes of the float `state_dict`")] = None
    calib_images: Annotated[int, Doc(Group.CELL, "calibration images used (0 when nothing is calibrated)")] = 0
    seconds: Annotated[
        float | Absent,
        Doc(Group.OUTCOME, "the cell's own wall time (an ONNX export's time is not in it: `onnx_seconds`)"),
    ] = ABSENT
    checkpoint: Annotated[str, Doc(Group.PROVENANCE, "the weight file, relative to the checkout")]
    data: Annotated[str, Doc(Group.PROVENANCE, "what the numbers were measured on, e.g. `CIFAR-10 (JPEG mirror)`")]
    checkpoint_test_top1: Annotated[
        float | Absent | None,
        Doc(
            Group.ACCURACY,
            "the test top-1 the weight file records (at its training precision); null when it records none",
        ),
    ] = ABSENT
    extra_test_fp32_top1: Annotated[float | Absent, Doc(Group.ACCURACY, "the float model on the second test set")] = (
        ABSENT
    )
    fp32_val_top1: Annotated[float | Absent, Doc(Group.ACCURACY, "the float model on the validation split")] = ABSENT
    test_images: Annotated[int | Absent, Doc(Group.ACCURACY, "images in the test split")] = ABSENT
    test_correct: Annotated[
        str | Absent,
        Doc(
            Group.ACCURACY,
            "which test images the cell got right: base64 of one bit per image (`qexp.cells.evaluate.unpack_correct`); "
            "the report's McNemar tests pair cells with it",
        ),
    ] = ABSENT
    val_top1: Annotated[
        float | Absent,
        Doc(
            Group.ACCURACY,
            "the quantized model on [the validation split](training.md#the-validation-split), on which settings are "
            "compared",
        ),
    ] = ABSENT
    val_images: Annotated[int | Absent, Doc(Group.ACCURACY, "images in the validation split")] = ABSENT
    extra_test_top1: Annotated[
        float | Absent,
        Doc(
            Group.ACCURACY,
            "with `data.extra_test_root`: the quantized model on the second test set (e.g. 1 017 original CIFAR-10 "
            "images)",
        ),
    ] = ABSENT
    extra_test_stderr: Annotated[float | Absent, Doc(Group.ACCURACY, "one standard error of `extra_test_top1`")] = (
        ABSENT
    )
    extra_test_label: Annotated[str | Absent, Doc(Group.ACCURACY, "what the second test set is")] = ABSENT
    method_fields: Pt2eFields | QATFields | Absent = ABSENT  # written flat, here
    payload_bytes: Annotated[
        int | Absent,
        Doc(Group.SIZE, "the numbers a kernel needs, each at its own precision (`qexp/quant/export/payload.py`)"),
    ] = ABSENT
    layer_bits: Annotated[
        dict[str, list[int]] | Absent,
        Doc(Group.CELL, "our PTQ and QAT: every layer's `[weight bits, input bits]`; empty for other methods"),
    ] = ABSENT
    onnx: OnnxUnsupported | OnnxExport | Absent = ABSENT  # written flat, here
    finished_at: Annotated[str | Absent, Doc(Group.OUTCOME, "UTC time, ISO 8601")] = ABSENT
    cell_key: Annotated[
        str | Absent,
        Doc(
            Group.PROVENANCE,
            "content hash of the resolved config (less where and how fast it runs, and less the settings its method "
            "never reads) and of the checkpoint's bytes ([sweeps.md](sweeps.md#resuming))",
        ),
    ] = ABSENT
    config: Annotated[
        dict[str, Any] | Absent, Doc(Group.PROVENANCE, "the resolved config, paths relative to the checkout")
    ] = ABSENT
    git: Annotated[str | Absent, Doc(Group.PROVENANCE, "the code's commit (`-dirty` when the tree had changes)")] = (
        ABSENT
    )
    versions: Annotated[
        dict[str, str] | Absent,
        Doc(
            Group.PROVENANCE,
            'Python, torch, torchvision, lightning, torchao, onnx, onnxruntime (`"not installed"` when absent)',
        ),
    ] = ABSENT
    hardware: Annotated[
        str | Absent, Doc(Group.PROVENANCE, "CPU model and core count, and the GPU when one is visible")
    ] = ABSENT
    threads: Annotated[int | Absent, Doc(Group.PROVENANCE, "torch threads")] = ABSENT

    def to_dict(self) -> dict[str, Any]:
        """The fields as ``result.json`` holds them: in order, sub-records flat in their place, ``ABSENT`` left out."""
        return _flat(self)


def _flat(record: Any) -> dict[str, Any]:
    """``record``'s fields by name, in order, a sub-record's spliced in its place; ``ABSENT`` ones left out."""
    written: dict[str, Any] = {}
    for item in dataclasses.fields(record):
        value = getattr(record, item.name)
        if dataclasses.is_dataclass(value):
            written.update(_flat(value))
        elif value is not ABSENT:
            written[item.name] = value
    return written


class SchemaRow(NamedTuple):
    """One row of docs/result-schema.md: a field's table, its type as the page writes it, its meaning."""

    group: Group
    type: str
    meaning: str


def type_text(hint: Any) -> str:
    """A field's type as docs/result-schema.md writes it (``float or null``, ``list of float``, ``dict``).

    ``Absent`` is not written: which fields a cell may lack is the page's prose and each field's meaning.
    """
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        parts = [arg for arg in typing.get_args(hint) if arg is not Absent]
        text = " or ".join(type_text(arg) for arg in parts if arg is not type(None))
        return f"{text} or null" if type(None) in parts else text
    if typing.get_origin(hint) is list:
        return f"list of {type_text(typing.get_args(hint)[0])}"
    if hint is dict or typing.get_origin(hint) is dict:
        return "dict"
    return hint.__name__


def schema(record: type = Result) -> dict[str, SchemaRow]:
    """Every field that ``record``'s ``result.json`` can hold, in written order, sub-records' fields in their place."""
    rows: dict[str, SchemaRow] = {}
    for name, hint in typing.get_type_hints(record, include_extras=True).items():
        if typing.get_origin(hint) is Annotated:
            (doc,) = hint.__metadata__
            rows[name] = SchemaRow(doc.group, type_text(hint.__origin__), doc.meaning)
            continue
        for part in typing.get_args(hint):  # a field holding a sub-record: its fields, written flat
            if dataclasses.is_dataclass(part):
                for sub_name, row in schema(part).items():
                    assert rows.setdefault(sub_name, row) == row, f"{sub_name} is described twice, differently"
    return rows


def schema_tables() -> dict[Group, str]:
    """docs/result-schema.md's table of each ``Group``: ``| field | type | meaning |``, one row a field."""
    tables = {group: ["| field | type | meaning |", "|---|---|---|"] for group in Group}
    for name, row in schema().items():
        tables[row.group].append(f"| `{name}` | {row.type} | {row.meaning} |")
    return {group: "\n".join(lines) for group, lines in tables.items()}


def _block(group: Group) -> re.Pattern[str]:
    start, end = re.escape(f"<!-- fields:{group.value} -->"), re.escape(f"<!-- /fields:{group.value} -->")
    return re.compile(rf"({start}\n)(?:(.*?)\n)?({end})", re.DOTALL)  # the body may be empty


def schema_blocks(text: str) -> dict[Group, str | None]:
    """The body of each ``<!-- fields:NAME -->`` ... ``<!-- /fields:NAME -->`` block in ``text``; None: it has none."""
    found = {group: _block(group).search(text) for group in Group}
    return {group: None if match is None else match.group(2) or "" for group, match in found.items()}


def fill_schema(text: str) -> str:
    """``text`` (docs/result-schema.md) with the body of every ``fields`` block replaced by its ``schema_tables``."""
    missing = [group.value for group, body in schema_blocks(text).items() if body is None]
    if missing:
        raise ValueError(
            f"the page has no block for {missing}; expected '<!-- fields:NAME -->' and '<!-- /fields:NAME -->'."
        )
    for group, table in schema_tables().items():
        text = _block(group).sub(lambda match, table=table: f"{match.group(1)}{table}\n{match.group(3)}", text)
    return text


if __name__ == "__main__":  # python -m qexp.cells.result docs/result-schema.md: refill the page's tables
    for page in map(Path, sys.argv[1:]):
        page.write_text(fill_schema(page.read_text()))
