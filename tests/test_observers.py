import numpy as np
import pytest
import torch

from qexp.quant.core.observers import (
    MinMaxObserver,
    MSEObserver,
    PercentileObserver,
    quantization_error,
)

OBSERVER_CLASSES = [MinMaxObserver, PercentileObserver, MSEObserver]


def test_minmax_tracks_extremes_over_batches_and_returns_input():
    observer = MinMaxObserver(8, symmetric=False)
    x = torch.tensor([-1.0, 2.0])
    assert observer(x) is x
    observer(torch.tensor([0.5, 3.0]))
    assert observer.clip_range() == (torch.tensor(-1.0), torch.tensor(3.0))


def test_uncalibrated_observer_refuses_to_give_parameters():
    with pytest.raises(RuntimeError, match="observed no data"):
        MinMaxObserver(8, symmetric=False).calculate_qparams()


def test_per_channel_percentile_equals_numpy_quantile():
    w = torch.randn(16, 8, 3, 3, generator=torch.Generator().manual_seed(0))
    observer = PercentileObserver(8, symmetric=True, axis=0, shape=w.shape, percentile=99.0)
    observer(w)
    low, high = observer.clip_range()
    rows = w.reshape(16, -1).numpy()
    np.testing.assert_allclose(high.numpy(), np.quantile(rows, 0.99, axis=1), rtol=1e-5)
    np.testing.assert_allclose(low.numpy(), np.quantile(rows, 0.01, axis=1), rtol=1e-5)


def test_histogram_percentile_is_close_to_the_exact_one_over_batches():
    x = torch.randn(200_000, generator=torch.Generator().manual_seed(1))
    observer = PercentileObserver(8, symmetric=False, percentile=99.0)
    for chunk in x.split(20_000):  # later batches widen the range and force a re-binning
        observer(chunk)
    _, high = observer.clip_range()
    assert abs(float(high) - float(np.quantile(x.numpy(), 0.99))) < 0.02


def test_mse_clips_a_gaussian_with_outliers_below_its_max():
    x = torch.randn(50_000, generator=torch.Generator().manual_seed(2))
    x[:10] = 40.0
    observer = MSEObserver(4, symmetric=False)
    observer(x)
    low, high = observer.clip_range()
    assert 2.0 < float(high) < 0.5 * 40.0  # clips the outliers, keeps the bulk
    values, counts = observer.distribution()
    chosen = quantization_error(values, counts, low[None], high[None], 4, False)
    full = quantization_error(values, counts, x.min()[None], x.max()[None], 4, False)
    assert chosen < full


def test_mse_per_channel_clips_each_channel_on_its_own():
    w = torch.randn(4, 512, generator=torch.Generator().manual_seed(3))
    w[0, 0] = 10.0
    observer = MSEObserver(4, symmetric=True, axis=0, shape=w.shape)
    observer(w)
    _, high = observer.clip_range()
    assert float(high[0]) < 8.0 and (high <= w.amax(dim=1)).all()
    assert float(high[0]) > float(high[1:].min())  # the outlier still widens its own channel


def test_percentile_out_of_range_is_rejected():
    with pytest.raises(ValueError, match="percentile=40"):
        PercentileObserver(8, symmetric=False, percentile=40)


@pytest.mark.parametrize("observer_class", OBSERVER_CLASSES)
def test_per_tensor_calibration_goes_on_from_a_state_dict(observer_class):
    g = torch.Generator().manual_seed(4)
    chunks = [torch.randn(5_000, generator=g) * scale for scale in (1.0, 0.5, 2.0, 3.0, 1.5, 4.0)]
    whole = observer_class(4, symmetric=False)
    first_half = observer_class(4, symmetric=False)
    for chunk in chunks:
        whole(chunk)
    for chunk in chunks[:3]:
        first_half(chunk)
    resumed = observer_class(4, symmetric=False)
    resumed.load_state_dict(first_half.state_dict())
    for chunk in chunks[3:]:  # wider than the first half: the loaded histogram is re-binned
        resumed(chunk)
    assert all(torch.equal(a, b) for a, b in zip(resumed.clip_range(), whole.clip_range(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(resumed.calculate_qparams(), whole.calculate_qparams(), strict=True))


@pytest.mark.parametrize("observer_class", OBSERVER_CLASSES)
def test_a_per_channel_observer_records_the_latest_weight_and_round_trips(observer_class):
    g = torch.Generator().manual_seed(5)
    old, new = torch.randn(2, 6, 4, 3, 3, generator=g)
    observer = observer_class(4, symmetric=True, axis=0, shape=new.shape)
    alone = observer_class(4, symmetric=True, axis=0, shape=new.shape)
    observer(old)
    observer(new)  # replaces: the weight as it is now, not a union with an earlier one
    alone(new)
    assert all(torch.equal(a, b) for a, b in zip(observer.clip_range(), alone.clip_range(), strict=True))
    fresh = observer_class(4, symmetric=True, axis=0, shape=new.shape)
    assert not fresh.calibrated
    fresh.load_state_dict(observer.state_dict())
    assert fresh.calibrated and fresh.min_val.shape == (6,)
    assert all(torch.equal(a, b) for a, b in zip(fresh.calculate_qparams(), alone.calculate_qparams(), strict=True))


def test_a_per_channel_observer_needs_the_shape_of_its_tensor():
    with pytest.raises(ValueError, match=r"axis=0 with shape=None"):
        MinMaxObserver(8, symmetric=True, axis=0)
    with pytest.raises(ValueError, match=r"axis=None with shape=\(4, 2\)"):
        MSEObserver(8, symmetric=True, shape=(4, 2))
