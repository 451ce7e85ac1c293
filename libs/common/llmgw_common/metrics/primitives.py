"""Loop-local series: counters and histograms for the hot paths (plain cells written on the event loop,
turned into samples only when scraped; prometheus_client's own take a lock and validate on every call)."""

from __future__ import annotations

import bisect
from typing import Any, Iterator, Sequence

from prometheus_client import REGISTRY
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

# seconds
REQUEST_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0)
TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 2.0, 4.0, 8.0, 15.0, 30.0, 60.0)
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# events per batch
BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 50000)


class _Cell:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class _Buckets:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket (not cumulative), the last one +Inf
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1  # the first bound >= value: Prometheus' le
        self.sum += value


class _LoopMetric:
    """A labelled series written by one event loop and read when scraped (a prometheus_client collector).

    Writers are the loop's own code (no lock: nothing awaits inside an update); a scrape on another thread
    would see each cell as it is, a histogram perhaps one observation apart from its sum."""

    _type = ""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (), registry=REGISTRY):
        self._name, self._documentation, self._labelnames = name, documentation, tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        self._unlabelled = None if self._labelnames else self.labels()  # exported from the start, as 0
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str):
        child = self._children.get(values)
        if child is None:
            assert len(values) == len(self._labelnames), (self._name, values)
            child = self._children[values] = self._new_child()
        return child

    def _new_child(self) -> Any:
        raise NotImplementedError

    def describe(self) -> list:
        return [self._family()]

    def _family(self) -> Any:
        raise NotImplementedError


class LoopCounter(_LoopMetric):
    _type = "counter"

    def inc(self, amount: float = 1.0) -> None:
        """An unlabelled counter's increment."""
        if self._unlabelled is None:
            raise TypeError(f"{self._name} has labels: increment .labels(...) instead")
        self._unlabelled.value += amount

    def _new_child(self) -> _Cell:
        return _Cell()

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = self._family()
        for values, cell in list(self._children.items()):
            family.add_metric(values, cell.value)
        yield family


class LoopHistogram(_LoopMetric):
    _type = "histogram"

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str] = (),
                 buckets: Sequence[float] = REQUEST_BUCKETS, registry=REGISTRY):
        self._bounds = tuple(float(b) for b in buckets)
        self._le = [floatToGoString(b) for b in self._bounds] + ["+Inf"]
        super().__init__(name, documentation, labelnames, registry)

    def _new_child(self) -> _Buckets:
        return _Buckets(self._bounds)

    def _family(self) -> HistogramMetricFamily:
        return HistogramMetricFamily(self._name, self._documentation, labels=self._labelnames)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = self._family()
        for values, child in list(self._children.items()):
            counts, running, buckets = list(child.counts), 0, []
            for le, n in zip(self._le, counts):
                running += n
                buckets.append((le, running))
            family.add_metric(values, buckets, child.sum)
        yield family

