"""Observers: record statistics of a tensor, then choose the clipping range its quantizer uses.

As in ``torch.ao.quantization``, an observer's ``forward`` records and returns its input
unchanged, and every observer ends in the same ``choose_qparams(min, max)`` -- they differ only
in the range they choose:

* ``minmax``: the observed extremes; nothing is clipped, so one outlier sets the step size;
* ``percentile``: the ``p``-th and ``(100 - p)``-th percentiles, clipping the rare tails;
* ``mse``: the range ``alpha * (min, max)`` whose quantization error ``sum (x - Q(x))^2`` is
  smallest for the given bit width, found by a search over ``alpha``. At 8 bits it barely
  clips; at 2 bits it trades large errors on a few outliers for a finer grid everywhere else.

Statistics are buffers whose shape is fixed when the observer is built, so a calibrated model's
``state_dict`` loads into a freshly built one, and calibration can go on from it. A per-channel
observer is built for one tensor, a weight, and is given its shape: it records that tensor as it
is now (its extremes and, for percentile and MSE, the tensor itself as ``channels x values``),
and observing again replaces the record. A per-tensor observer accumulates batches in bounded
memory: the running min/max and a fixed-size histogram that is re-binned when a later batch
widens the range, so calibrating on more batches costs time, not memory. Percentile and MSE then
work on ``(values, counts)`` -- the raw values with unit counts, or the bin centres with the bin
counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from qexp.errors import QexpError
from qexp.quant.core.affine import choose_qparams, fake_quantize, quant_range

HISTOGRAM_BINS = 2048
MSE_CANDIDATES = 100
# Of a weight: one range per output channel (an observer with axis=0), or one for the whole tensor.
GRANULARITIES = ("per_channel", "per_tensor")
WEIGHT_GRIDS = ("narrow", "full")  # signed weight grids: narrow (symmetric) or full range (affine.quant_range)


# --- range choice: pure functions of a (values, counts) distribution, one row per channel -----


def percentile_range(values: Tensor, counts: Tensor | None, percentile: float) -> tuple[Tensor, Tensor]:
    """Per-row ``(100 - p)``-th and ``p``-th percentiles of ``values`` (``C x K``), weighted by ``counts``.

    With ``counts=None`` this is ``numpy.quantile`` with linear interpolation; with counts (a
    histogram) it is the centre of the bin where the CDF crosses the percentile, so it is
    accurate to half a bin (1/4096 of the observed range).
    """
    q = torch.tensor([1 - percentile / 100, percentile / 100], dtype=values.dtype, device=values.device)
    if counts is None:
        low, high = torch.quantile(values, q, dim=1)
        return low, high
    cdf = counts.cumsum(dim=1)
    cdf = cdf / cdf[:, -1:].clamp(min=1)
    index = torch.searchsorted(cdf.contiguous(), q.expand(len(cdf), 2).contiguous()).clamp(max=values.shape[1] - 1)
    chosen = values.gather(1, index)
    return chosen[:, 0], chosen[:, 1]


def quantization_error(
    values: Tensor, counts: Tensor | None, low: Tensor, high: Tensor, bits: int, symmetric: bool, narrow: bool = True
) -> Tensor:
    """Per-row ``sum counts * (v - Q(v))^2`` for the grids chosen from ``[low, high]``.

    ``values`` and ``counts`` are ``C x K``; ``low`` and ``high`` are ``... x C`` (several candidate
    ranges per row at once), and so is the result.
    """
    scale, zero_point = choose_qparams(low, high, bits, symmetric, narrow)
    qmin, qmax = quant_range(bits, symmetric, narrow)
    error = (fake_quantize(values, scale[..., None], zero_point[..., None], qmin, qmax) - values) ** 2
    if counts is not None:
        error = error * counts
    return error.sum(dim=-1)


def mse_range(
    values: Tensor,
    counts: Tensor | None,
    bits: int,
    symmetric: bool,
    candidates: int = MSE_CANDIDATES,
    narrow: bool = True,
) -> tuple[Tensor, Tensor]:
    """Per-row range ``alpha * (min, max)`` minimising the quantization error, ``alpha`` in (0, 1].

    All candidates are evaluated in one batched computation (``candidates x C x K``); on ties the
    smallest ``alpha`` wins.
    """
    if counts is None:
        low, high = values.amin(dim=1), values.amax(dim=1)
    else:  # the extreme occupied bins
        occupied = counts > 0
        low = torch.where(occupied, values, torch.inf).amin(dim=1)
        high = torch.where(occupied, values, -torch.inf).amax(dim=1)
    alphas = torch.linspace(1.0 / candidates, 1.0, candidates, device=values.device)[:, None]
    errors = quantization_error(values, counts, alphas * low, alphas * high, bits, symmetric, narrow)
    best = alphas[errors.argmin(dim=0), 0]
    return best * low, best * high


# --- observers ----------------------------------------------------------------------------------


class Observer(nn.Module):
    """Min/max observer; the base of the others. ``axis`` set: one range per channel along it.

    A per-channel observer needs the ``shape`` of the tensor it will see, to size its state; a
    per-tensor one (``axis=None``) takes none. ``narrow=False`` gives a symmetric observer the
    full signed range (one level more on the negative side, ``affine.quant_range``).
    """

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        axis: int | None = None,
        shape: Sequence[int] | None = None,
        *,
        narrow: bool = True,
    ) -> None:
        super().__init__()
        if (axis is None) != (shape is None):
            raise ValueError(
                f"axis={axis!r} with shape={shape!r}; expected both (a per-channel observer) or neither (per-tensor)."
            )
        self.bits = bits
        self.symmetric = symmetric
        self.narrow = narrow
        self.axis = axis
        channels = () if shape is None else (shape[axis],)
        self.register_buffer("min_val", torch.full(channels, torch.inf))
        self.register_buffer("max_val", torch.full(channels, -torch.inf))

    def forward(self, x: Tensor) -> Tensor:
        self.observe(x.detach().float())
        return x

    def _rows(self, x: Tensor) -> Tensor:
        """``x`` as ``channels x values`` (one row when per-tensor)."""
        if self.axis is None:
            return x.reshape(1, -1)
        return x.movedim(self.axis, 0).reshape(x.shape[self.axis], -1)

    def observe(self, x: Tensor) -> None:
        low, high = torch.aminmax(self._rows(x), dim=1)
        if self.axis is None:  # batches: the running extremes; per channel, a weight's extremes as it is now
            low, high = torch.minimum(self.min_val, low[0]), torch.maximum(self.max_val, high[0])
        self.min_val.copy_(low)
        self.max_val.copy_(high)

    @property
    def calibrated(self) -> bool:
        return bool(torch.isfinite(self.min_val).all() and torch.isfinite(self.max_val).all())

    def clip_range(self) -> tuple[Tensor, Tensor]:
        return self.min_val, self.max_val

    def calculate_qparams(self) -> tuple[Tensor, Tensor]:
        """``(scale, zero_point)`` for the chosen range; fails loudly if nothing was observed."""
        if not self.calibrated:
            raise RuntimeError(f"{type(self).__name__} has observed no data; calibration did not reach it")
        low, high = self.clip_range()
        return choose_qparams(low, high, self.bits, self.symmetric, self.narrow)

    def extra_repr(self) -> str:
        kind = ("symmetric" if self.narrow else "signed full-range") if self.symmetric else "asymmetric"
        granularity = "per-tensor" if self.axis is None else f"per-channel(axis={self.axis})"
        return f"bits={self.bits}, {kind}, {granularity}"


MinMaxObserver = Observer


class DistributionObserver(Observer):
    """Keeps the distribution: the tensor itself (per-channel, as last observed) or a histogram (per-tensor)."""

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        axis: int | None = None,
        shape: Sequence[int] | None = None,
        bins: int = HISTOGRAM_BINS,
        *,
        narrow: bool = True,
    ) -> None:
        super().__init__(bits, symmetric, axis, shape, narrow=narrow)
        self.bins = bins
        if shape is None:
            self.register_buffer("histogram", torch.zeros(bins))
        else:
            self.register_buffer("values", torch.zeros(shape[axis], math.prod(shape) // shape[axis]))

    def observe(self, x: Tensor) -> None:
        if self.axis is not None:
            self.values.copy_(self._rows(x))
            super().observe(x)
            return
        previous = (self.min_val.clone(), self.max_val.clone())
        super().observe(x)
        if torch.isfinite(previous[0]) and (self.min_val < previous[0] or self.max_val > previous[1]):
            self._rebin(*previous)
        self.histogram += torch.histc(x, self.bins, float(self.min_val), float(self.max_val))

    def _centres(self, low: Tensor, high: Tensor) -> Tensor:
        width = (high - low) / self.bins
        return low + width * (torch.arange(self.bins, device=low.device) + 0.5)

    def _rebin(self, old_low: Tensor, old_high: Tensor) -> None:
        """Move the counts of the old bins to the bins of the widened range holding their centres."""
        centres = self._centres(old_low, old_high)
        width = (self.max_val - self.min_val).clamp(min=1e-12) / self.bins
        index = ((centres - self.min_val) / width).long().clamp(0, self.bins - 1)
        self.histogram = torch.zeros_like(self.histogram).index_add_(0, index, self.histogram)

    def distribution(self) -> tuple[Tensor, Tensor | None]:
        """``(values, counts)`` with one row per channel; ``counts`` is None for raw values."""
        if self.axis is not None:
            return self.values, None
        return self._centres(self.min_val, self.max_val)[None], self.histogram[None]

    def _per_axis(self, low: Tensor, high: Tensor) -> tuple[Tensor, Tensor]:
        return (low, high) if self.axis is not None else (low[0], high[0])


class PercentileObserver(DistributionObserver):
    """Clips to the ``percentile``-th (and ``100 - percentile``-th) percentile."""

    def __init__(
        self,
        bits: int,
        symmetric: bool,
        axis: int | None = None,
        shape: Sequence[int] | None = None,
        percentile: float = 99.99,
        bins: int = HISTOGRAM_BINS,
        *,
        narrow: bool = True,
    ) -> None:
        super().__init__(bits, symmetric, axis, shape, bins, narrow=narrow)
        if not 50 < percentile <= 100:
            raise QexpError(f"percentile={percentile!r} is out of range; expected a value in (50, 100].")
        self.percentile = percentile

    def clip_range(self) -> tuple[Tensor, Tensor]:
        values, counts = self.distribution()
        return self._per_axis(*percentile_range(values, counts, self.percentile))

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, percentile={self.percentile}"


class MSEObserver(DistributionObserver):
    """Chooses the clipping range with the least squared quantization error at ``bits``."""

    def clip_range(self) -> tuple[Tensor, Tensor]:
        values, counts = self.distribution()
        return self._per_axis(*mse_range(values, counts, self.bits, self.symmetric, narrow=self.narrow))


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
}
