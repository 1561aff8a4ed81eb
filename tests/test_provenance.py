"""What a result records of where it came from: the library versions."""

import importlib

import yaml

from qexp.cells.provenance import NOT_INSTALLED, OPTIONAL_LIBRARIES, installed_versions, versions


def test_versions_name_every_library_a_result_depends_on():
    found = versions()
    assert set(OPTIONAL_LIBRARIES) == {"torchao", "onnx", "onnxruntime"} <= set(found)
    for module in OPTIONAL_LIBRARIES:  # installed in the project's environment: the module's own version
        assert found[module] == importlib.import_module(module).__version__


def test_an_absent_library_is_marked_and_a_differently_named_distribution_is_named():
    found = installed_versions(("qexp_no_such_module", "yaml"))
    assert found == {"qexp_no_such_module": NOT_INSTALLED, "yaml": f"{yaml.__version__} (PyYAML)"}
