"""A cell's identity: settings that decide its numbers tell cells apart, settings its method never reads do not."""

from pathlib import Path

from qexp.cells.cache import cell_key


def test_settings_a_method_never_reads_make_no_other_cell(compose_in, weights_file: Path):
    def key(*overrides: str) -> str:
        return cell_key(compose_in("quantize", ["data=synthetic", *overrides]), weights_file)

    # PyTorch's float16 cast observes nothing; the float model reads neither the observer nor the bits.
    cast = "quant=torch_ptq", "bits=16"
    assert key(*cast, "observer=minmax") == key(*cast, "observer=mse") == key(*cast, "observer=percentile")
    assert key("quant=none", "bits=8", "observer=minmax") == key("quant=none", "bits=4", "observer=mse")
    # Where they are read, they are other cells.
    assert key("quant=torch_ptq", "bits=8", "observer=minmax") != key("quant=torch_ptq", "bits=8", "observer=mse")
    assert key("bits=16", "observer=minmax") != key("bits=16", "observer=mse")  # our 16-bit PTQ observes
    percentile = "bits=4", "observer=percentile"
    assert key(*percentile) != key(*percentile, "quant.percentile=99.9") != key("bits=4", "observer=minmax")
    assert key(*cast) != key("quant=none") != key("bits=16")
