"""The result record: what it writes, in which order, and that docs/result-schema.md describes exactly it."""

import re
from pathlib import Path

import pytest

from qexp.cells.result import (
    ABSENT,
    Group,
    OnnxUnsupported,
    QATFields,
    Result,
    fill_schema,
    schema,
    schema_blocks,
    schema_tables,
)

PAGE = Path(__file__).resolve().parent.parent / "docs" / "result-schema.md"


def documented_fields(page: str) -> dict[str, str]:
    """``name -> type`` of every table row in the page's ``result.json`` section (a row may name several fields)."""
    section = page.split("## `result.json`", 1)[1].split("\n## ", 1)[0]
    listed = {}
    for row in re.findall(r"^\| (`.+?) \| (.+?) \| .* \|$", section, re.MULTILINE):
        for name in re.findall(r"`(\w+)`", row[0]):
            listed[name] = row[1]
    return listed


def test_every_field_of_the_record_is_on_the_page_with_its_type_and_the_page_lists_no_other():
    in_record = {name: row.type for name, row in schema().items()}
    on_page = documented_fields(PAGE.read_text())
    assert on_page == in_record
    assert in_record["top1"] == "float or null" and in_record["qat_val_history"] == "list of float"
    assert in_record["layer_bits"] == "dict" and in_record["val_top1"] == "float"  # ABSENT is not a type of the page


def test_the_pages_tables_are_the_ones_the_record_generates():
    text = PAGE.read_text()
    stale = [group.value for group, body in schema_blocks(text).items() if body != schema_tables()[group]]
    assert stale == [], f"regenerate docs/result-schema.md: python -m qexp.cells.result docs/result-schema.md ({stale})"
    assert fill_schema(text) == text


def test_filling_a_page_replaces_only_the_blocks_and_needs_every_one():
    blocks = "".join(f"<!-- fields:{g.value} -->\nSTALE\n<!-- /fields:{g.value} -->\nprose\n" for g in Group)
    filled = fill_schema(f"intro\n{blocks}end")
    assert filled.startswith("intro\n<!-- fields:cell -->\n| field | type | meaning |\n|---|---|---|\n| `quant` |")
    assert filled.endswith("| `threads` | int | torch threads |\n<!-- /fields:provenance -->\nprose\nend")
    assert "STALE" not in filled and filled.count("prose") == len(Group)
    with pytest.raises(ValueError, match=r"the page has no block for \['provenance'\]"):
        fill_schema(blocks.split("<!-- fields:provenance -->")[0])


def test_a_record_is_written_in_order_with_sub_records_in_place_and_absent_fields_left_out():
    result = Result(
        quant="qat", bits=4, w_bits=4, a_bits=4, observer="minmax", granularity="per_channel", first_last_bits=None,
        flow=None, recovery=None, average_bits=None, shared_activations=None, weight_grid=None, export="onnx",
        checkpoint="weights.pt", data="synthetic",
    )  # fmt: skip
    written = result.to_dict()
    assert written["status"] == "failed" and written["top1"] is None and written["flow"] is None  # null is written
    assert "seconds" not in written and "val_top1" not in written and "qat_epochs" not in written  # ABSENT is not
    result.method_fields = QATFields(
        qat_epochs=2, qat_seconds=1.5, qat_chosen_epoch=1, qat_val_top1=None, qat_val_history=[]
    )
    result.val_top1, result.payload_bytes, result.layer_bits = 10.0, 7, {}
    result.onnx = OnnxUnsupported(onnx_reason="no")
    result.seconds, result.threads = 3.0, 1
    written = result.to_dict()
    order = list(written)
    assert order == [name for name in schema() if name in written]  # the page's rows are in written order
    assert order.index("val_top1") < order.index("qat_epochs") < order.index("qat_val_history")
    assert order.index("qat_val_history") < order.index("payload_bytes") < order.index("onnx_status")
    assert (written["onnx_status"], written["onnx_reason"], written["qat_val_top1"]) == ("unsupported", "no", None)
    assert order[-1] == "threads" and ABSENT not in written.values()
