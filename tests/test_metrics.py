"""GET /metrics text: the bridge's own counters and histograms read as Prometheus reads them."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families

from bridge.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the rendered text, parsed by prometheus-client's own parser."""
    found = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_counters_add_up_per_label_set() -> None:
    metrics = Metrics()
    metrics.relayed.labels("ig", "message").inc()
    metrics.relayed.labels("ig", "message").inc()
    metrics.relayed.labels("fbm", "notice").inc()
    metrics.received.labels("wa").inc(50)
    got = samples(metrics)
    assert got[("tribridge_events_relayed_total",
                (("kind", "message"), ("network", "ig")))] == 2
    assert got[("tribridge_events_relayed_total",
                (("kind", "notice"), ("network", "fbm")))] == 1
    assert got[("tribridge_events_received_total", (("network", "wa"),))] == 50


def test_histogram_buckets_are_cumulative_with_count_and_sum() -> None:
    metrics = Metrics()
    timing = metrics.send_seconds.labels("ig")
    for seconds in (0.0005, 0.0007, 0.003, 0.2, 30.0):  # 0.0005 sits on a bound: le counts it
        timing.observe(seconds)
    got = samples(metrics)

    def bucket(le: str) -> float:
        return got[("tribridge_send_seconds_bucket", (("le", le), ("network", "ig")))]

    assert bucket("0.0005") == 1
    assert bucket("0.001") == 2
    assert bucket("0.005") == 3
    assert bucket("0.25") == 4
    assert bucket("10.0") == 4
    assert bucket("+Inf") == 5
    assert got[("tribridge_send_seconds_count", (("network", "ig"),))] == 5
    assert got[("tribridge_send_seconds_sum", (("network", "ig"),))] == pytest.approx(30.2042)


def test_a_label_set_of_the_wrong_size_is_refused_by_name() -> None:
    metrics = Metrics()
    with pytest.raises(ValueError, match="tribridge_events_relayed takes labels"):
        metrics.relayed.labels("ig")


def test_every_series_says_when_it_began_as_prometheus_client_does() -> None:
    metrics = Metrics()
    metrics.relayed.labels("ig", "message").inc()
    metrics.send_seconds.labels("ig").observe(0.01)
    got = samples(metrics)
    assert got[("tribridge_events_relayed_created",
                (("kind", "message"), ("network", "ig")))] > 1.7e9
    assert got[("tribridge_send_seconds_created", (("network", "ig"),))] > 1.7e9


def test_a_counter_refuses_to_go_down() -> None:
    with pytest.raises(ValueError, match="only goes up"):
        Metrics().received.labels("wa").inc(-1)


def test_a_second_metric_of_the_same_name_is_refused() -> None:
    from bridge.metrics import Tally

    metrics = Metrics()
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        Tally("tribridge_events_received", "again", ["network"], metrics.registry)
