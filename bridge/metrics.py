"""What the bridge counts, for GET /metrics (Prometheus text format) and GET /health.

One registry per bridge (not prometheus-client's global one), so tests and several bridges in one
process never share counters. No label carries a user id, a room id or an event id: only network
ids and failure classes, so the series stay few and nothing private leaks into monitoring.

The counters and histograms touched on every push and every send are our own (`Tally`,
`Timings`): plain numbers in the one thread the bridge runs in, turned into prometheus-client's
metric families only when /metrics is read. prometheus-client's own take a lock and check their
arguments on every call, 4% of the bridge's time on the hot path (docs/performance.md). The
rarely set gauges stay prometheus-client's.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString

CONTENT_TYPE = CONTENT_TYPE_LATEST
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Count:
    """One labelled counter's value."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()  # exported as <name>_created, as prometheus-client does

    def inc(self, amount: float = 1.0) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class Timing:
    """One labelled histogram's buckets (counts per bucket, not yet cumulative) and sum."""

    __slots__ = ("bounds", "counts", "created", "total")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last one is +Inf
        self.total = 0.0
        self.created = time.time()

    def observe(self, seconds: float) -> None:
        # A bucket counts values <= its bound, so the first bound >= seconds.
        self.counts[bisect_left(self.bounds, seconds)] += 1
        self.total += seconds


Child = TypeVar("Child", Count, Timing)


class _Family(Collector, Generic[Child]):
    """Children by label values, rendered as one metric family."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 registry: CollectorRegistry) -> None:
        self.name, self.documentation, self.label_names = name, documentation, list(labels)
        self._children: dict[tuple[str, ...], Child] = {}
        registry.register(self)

    def labels(self, *values: str) -> Child:
        child = self._children.get(values)
        if child is None:
            if len(values) != len(self.label_names):
                raise ValueError(f"{self.name} takes labels {self.label_names}, got {values}")
            child = self._children[values] = self._new()
        return child

    def describe(self) -> Iterator[Metric]:
        # What the registry checks a new collector's names against (no duplicates).
        yield from self._empty()

    def _new(self) -> Child:
        raise NotImplementedError

    def _empty(self) -> Iterator[Metric]:
        raise NotImplementedError


class Tally(_Family[Count]):
    """A counter by labels (prometheus `counter`, rendered with the `_total` suffix)."""

    def _new(self) -> Count:
        return Count()

    def _empty(self) -> Iterator[Metric]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in sorted(self._children.items()):
            family.add_metric(list(values), child.value, created=child.created)
        yield family


class Timings(_Family[Timing]):
    """A histogram by labels, with fixed bucket bounds (seconds)."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str],
                 registry: CollectorRegistry, buckets: Sequence[float] = _FAST) -> None:
        super().__init__(name, documentation, labels, registry)
        self.bounds = tuple(sorted(buckets))

    def _new(self) -> Timing:
        return Timing(self.bounds)

    def _empty(self) -> Iterator[Metric]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.label_names)
        for values, child in sorted(self._children.items()):
            running, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), child.counts, strict=True):
                running += count
                buckets.append((floatToGoString(bound), running))  # type: ignore[no-untyped-call]
            family.add_metric(list(values), buckets, child.total)
            family.samples.append(Sample(f"{self.name}_created",
                                         dict(zip(self.label_names, values, strict=True)),
                                         child.created))
        yield family


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Tally(
            "tribridge_events_received", "Events pushed by a homeserver", ["network"], r
        )
        self.relayed = Tally(
            "tribridge_events_relayed", "Actions delivered to a homeserver", ["network", "kind"], r
        )
        self.failures = Tally(
            "tribridge_delivery_failures", "Failed delivery attempts, by what happens next",
            ["network", "class"], r,
        )
        self.reconciled = Tally(
            "tribridge_events_reconciled", "Events taken in from room timelines, not pushes",
            ["network"], r,
        )
        self.timeline_reads = Tally(
            "tribridge_timeline_reads",
            "Room timelines read back to their mark, by why: push (a distrusted push's room), "
            "catch-up (every room after a start), sweep (every room after a window of "
            "distrust), minute (rooms with pushes in the last minute)",
            ["network", "why"], r,
        )
        self.pruned = Tally(
            "tribridge_pruned_rows", "Rows deleted from the store once past bridge.history_days",
            ["table"], r,
        )
        self.outbox = Gauge(
            "tribridge_outbox_pending", "Actions waiting to be delivered", ["network"], registry=r
        )
        self.reachable = Gauge(
            "tribridge_homeserver_reachable", "1 while the homeserver answers", ["network"],
            registry=r,
        )
        self.transaction_seconds = Timings(
            "tribridge_transaction_seconds", "Time to take in a pushed transaction (to the 200)",
            ["network"], r,
        )
        self.send_seconds = Timings(
            "tribridge_send_seconds", "Time of one delivery request to a homeserver",
            ["network"], r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
