"""``Tally``: observations counted in plain ints and folded in give what ``observe`` gives.

The fold writes prometheus-client's own bucket and sum values; if an upgrade of the
library changed them, this comparison fails (not the scrapes of a running server).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Histogram

from exchange.metrics import TALLIES, Tally

BUCKETS = (0.001, 0.01, 0.1, 1)
VALUES = (0.0005, 0.001, 0.0011, 0.05, 0.1, 0.5, 1, 3, 7.5, 0.001)


def samples(histogram: Histogram) -> list[tuple[str, dict[str, str], float]]:
    return [
        (s.name.split("_", 1)[1], s.labels, s.value)
        for metric in histogram.collect()
        for s in metric.samples
        if not s.name.endswith("_created")
    ]


def test_a_tally_folds_into_the_same_histogram_as_observe() -> None:
    registry = CollectorRegistry()
    observed = Histogram("a_seconds", "observed", ["verb"], buckets=BUCKETS, registry=registry)
    tallied = Histogram("b_seconds", "tallied", ["verb"], buckets=BUCKETS, registry=registry)
    tally = Tally(tallied)
    try:
        row = tally.tally("GET")
        other = tally.tally("POST")
        for value in VALUES:
            observed.labels("GET").observe(value)
            tally.count(row, value)
        observed.labels("POST").observe(0.2)
        tally.count(other, 0.2)
        assert samples(tallied) == [] or all(v == 0 for _n, _l, v in samples(tallied))
        tally.flush()
        assert samples(tallied) == samples(observed)
        tally.flush()  # nothing new: nothing added twice
        assert samples(tallied) == samples(observed)
        observed.labels("GET").observe(2)
        tally.count(row, 2)
        tally.flush()
        assert samples(tallied) == samples(observed)
    finally:
        TALLIES.remove(tally)
