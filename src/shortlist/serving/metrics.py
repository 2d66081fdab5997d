"""Prometheus metrics of one serving process (its own registry, so apps never collide).

- `shortlist_request_latency_seconds{endpoint}`: histogram, measured around the whole
  ASGI call (validation and serialisation included).
- `shortlist_requests_total{endpoint,status}`: every answered request, 4xx/5xx included.
- `shortlist_live_bundle_info{bundle_id}`: 1 for the bundle serving now (one label set).
- `shortlist_bundle_swaps_total`, `shortlist_bundle_load_failures_total`.
- `shortlist_canary_recall{check}`: every recall figure of the live bundle's last canary
  report (`canary.json` beside the bundle), by its dotted key; `shortlist_canary_passed`.
- `shortlist_impressions_rows_total`: rows handed to the impressions log.
- `shortlist_impressions_replayed_lists`: served lists a crashed predecessor left in the
  write-ahead file, recovered into Parquet when this process started (non-zero = a crash).
- `shortlist_impressions_wal_errors`: appends the write-ahead file refused (e.g. a full
  disk); those lists are durable only once their Parquet file is written.
- `shortlist_exploration_lists_total`, `shortlist_explored_items_total`: lists served
  with exploration slots, and the items drawn into them.
- `shortlist_exploration_cost`: summary of each list's expected loss in score against
  the greedy list (`_sum / _count`: the mean cost per list; greedy lists count 0).
- `shortlist_bandit_lists_total`, `shortlist_bandit_successes_total`: lists the bandit
  served while no bundle was live, and positive events credited to its posterior.
- `shortlist_events_total{kind}`: events accepted (written to the events log), by kind
  (custom kinds are counted as `custom`, so clients cannot grow the label set).
- `shortlist_events_rejected_total{reason}`: events refused, by reason: unknown_request,
  item_not_in_list, too_late, in_refused_batch (a good event of a refused batch),
  unavailable (the events write-ahead file could not take it).
- `shortlist_events_replayed_batches`, `shortlist_events_wal_errors`: as for impressions.
- `shortlist_served_lists_tracked`: served lists held in memory to check events against.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    generate_latest,
)

if TYPE_CHECKING:
    from shortlist.serving.events import EventLog, ServedLists
    from shortlist.serving.impressions import ImpressionLog

LATENCY_BUCKETS = (
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.015,
    0.02,
    0.03,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
)


class ServingMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "shortlist_request_latency_seconds",
            "Request latency by endpoint",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.requests = Counter(
            "shortlist_requests",
            "Requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.live_bundle = Gauge(
            "shortlist_live_bundle_info",
            "The bundle serving now (value 1)",
            ["bundle_id"],
            registry=r,
        )
        self.swaps = Counter("shortlist_bundle_swaps", "Bundle swaps", registry=r)
        self.load_failures = Counter(
            "shortlist_bundle_load_failures", "Bundles refused (failed to load)", registry=r
        )
        self.canary_recall = Gauge(
            "shortlist_canary_recall",
            "Recall figures of the live bundle's last canary report",
            ["check"],
            registry=r,
        )
        self.canary_passed = Gauge(
            "shortlist_canary_passed", "1 if the live bundle's last canary passed", registry=r
        )
        self.impression_rows = Counter(
            "shortlist_impressions_rows", "Rows handed to the impressions log", registry=r
        )
        self.exploration_lists = Counter(
            "shortlist_exploration_lists", "Lists served with exploration slots", registry=r
        )
        self.explored_items = Counter(
            "shortlist_explored_items", "Items drawn by exploration slots", registry=r
        )
        self.exploration_cost = Summary(
            "shortlist_exploration_cost",
            "Expected loss in score of each served list against the greedy list",
            registry=r,
        )
        self.bandit_lists = Counter(
            "shortlist_bandit_lists", "Lists served by the bandit (no bundle live)", registry=r
        )
        self.bandit_successes = Counter(
            "shortlist_bandit_successes",
            "Positive events credited to the bandit's posterior",
            registry=r,
        )
        self.events = Counter("shortlist_events", "Events accepted, by kind", ["kind"], registry=r)
        self.events_rejected = Counter(
            "shortlist_events_rejected", "Events refused, by reason", ["reason"], registry=r
        )
        self._lock = threading.Lock()

    def watch_events(self, log: EventLog, served: ServedLists) -> None:
        """Expose the events log's recovery and write-ahead error counts, and how many
        served lists are held to check events against."""
        r = self.registry
        Gauge(
            "shortlist_events_replayed_batches",
            "Event batches recovered from the write-ahead file at start",
            registry=r,
        ).set_function(lambda: log.batches_replayed)
        Gauge(
            "shortlist_events_wal_errors",
            "Event batches the write-ahead file refused",
            registry=r,
        ).set_function(lambda: log.wal_errors)
        Gauge(
            "shortlist_served_lists_tracked",
            "Served lists held in memory to check events against",
            registry=r,
        ).set_function(lambda: len(served))

    def watch_impressions(self, log: ImpressionLog) -> None:
        """Expose the impressions log's recovery and write-ahead error counts."""
        r = self.registry
        Gauge(
            "shortlist_impressions_replayed_lists",
            "Served lists recovered from the write-ahead file at start",
            registry=r,
        ).set_function(lambda: log.lists_replayed)
        Gauge(
            "shortlist_impressions_wal_errors",
            "Appends the impressions write-ahead file refused",
            registry=r,
        ).set_function(lambda: log.wal_errors)

    def observe_list(self, explored: int, expected_cost: float) -> None:
        """Count one served list's exploration: items drawn and its expected cost."""
        self.exploration_cost.observe(expected_cost)
        if explored:
            self.exploration_lists.inc()
            self.explored_items.inc(explored)

    def observe(self, endpoint: str, status: int, seconds: float) -> None:
        self.latency.labels(endpoint).observe(seconds)
        self.requests.labels(endpoint, str(status)).inc()

    def set_live_bundle(self, bundle_id: str, canary: dict[str, Any] | None) -> None:
        with self._lock:
            self.live_bundle.clear()
            self.live_bundle.labels(bundle_id).set(1)
            self.set_canary(canary)

    def set_canary(self, canary: dict[str, Any] | None) -> None:
        self.canary_recall.clear()
        if not canary:
            self.canary_passed.set(float("nan"))
            return
        for key, value in _recall_leaves(canary):
            self.canary_recall.labels(key).set(value)
        passed = canary.get("passed")
        self.canary_passed.set(float(passed) if isinstance(passed, bool) else float("nan"))

    def render(self) -> bytes:
        return generate_latest(self.registry)


def _recall_leaves(node: Any, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(dotted key, value) for every numeric leaf whose key path mentions recall."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _recall_leaves(value, f"{prefix}.{key}" if prefix else str(key))
    elif (
        isinstance(node, int | float) and not isinstance(node, bool) and "recall" in prefix.lower()
    ):
        yield prefix, float(node)
