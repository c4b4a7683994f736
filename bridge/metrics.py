"""What the bridge counts, for GET /metrics (Prometheus text format) and GET /health.

One registry per bridge (not prometheus-client's global one), so tests and several bridges in one
process never share counters. No label carries a user id, a room id or an event id: only network
ids and failure classes, so the series stay few and nothing private leaks into monitoring.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

CONTENT_TYPE = CONTENT_TYPE_LATEST
_FAST = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.received = Counter(
            "tribridge_events_received", "Events pushed by a homeserver", ["network"], registry=r
        )
        self.relayed = Counter(
            "tribridge_events_relayed", "Actions delivered to a homeserver", ["network", "kind"],
            registry=r,
        )
        self.failures = Counter(
            "tribridge_delivery_failures", "Failed delivery attempts, by what happens next",
            ["network", "class"], registry=r,
        )
        self.reconciled = Counter(
            "tribridge_events_reconciled", "Events taken in from room timelines, not pushes",
            ["network"], registry=r,
        )
        self.outbox = Gauge(
            "tribridge_outbox_pending", "Actions waiting to be delivered", ["network"], registry=r
        )
        self.reachable = Gauge(
            "tribridge_homeserver_reachable", "1 while the homeserver answers", ["network"],
            registry=r,
        )
        self.transaction_seconds = Histogram(
            "tribridge_transaction_seconds", "Time to take in a pushed transaction (to the 200)",
            ["network"], buckets=_FAST, registry=r,
        )
        self.send_seconds = Histogram(
            "tribridge_send_seconds", "Time of one delivery request to a homeserver",
            ["network"], buckets=_FAST, registry=r,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
