"""Prometheus metrics, computed from the state store at scrape time (no patient data, invariant 4).

Counts and histograms come from the rows themselves, so they survive restarts
and agree with ``appliance status``. Each app gets its own
:class:`~prometheus_client.CollectorRegistry`.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from appliance.config import Config
from appliance.jobs import backpressure
from appliance.slots import SlotBoard
from appliance.state import DELIVERY_STATES, JOB_STATES, StateStore

__all__ = ["JOB_BUCKETS", "LATENCY_BUCKETS", "StoreCollector", "free_bytes", "metrics_registry", "triton_metrics"]

JOB_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
RECENT_JOBS_FOR_RATE = 20


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def _histogram(
    store: StateStore, name: str, doc: str, label: str, sql_value: str, table_where: str, buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    """A histogram of ``sql_value`` per ``label`` column, bucketed in SQL."""
    sums = ", ".join(f"sum(case when {sql_value} <= {le!r} then 1 else 0 end) as b{i}" for i, le in enumerate(buckets))
    rows = store.query(
        f"select {label} as label, count(*) as n, coalesce(sum({sql_value}), 0) as total, {sums}"
        f" from {table_where} group by {label}"
    )
    family = HistogramMetricFamily(name, doc, labels=[label])
    for row in rows:
        cumulative = [(repr(le), float(row[f"b{i}"] or 0)) for i, le in enumerate(buckets)]
        cumulative.append(("+Inf", float(row["n"])))
        family.add_metric([str(row["label"])], cumulative, sum_value=float(row["total"]))
    return family


class StoreCollector(Collector):
    """Collects the appliance's metrics from the state store on every scrape."""

    def __init__(self, config: Config, store: StateStore) -> None:
        self.config = config
        self.store = store

    def collect(self) -> Iterator[Metric]:
        store = self.store
        instances = CounterMetricFamily("appliance_instances_received", "DICOM instances stored by the node")
        instances.add_metric([], float(store.query("select count(*) as n from instances")[0]["n"]))
        yield instances
        studies = GaugeMetricFamily("appliance_studies", "Studies known to the appliance")
        studies.add_metric([], float(store.query("select count(*) as n from studies")[0]["n"]))
        yield studies

        jobs = GaugeMetricFamily("appliance_jobs", "Jobs by state", labels=["state"])
        counts = {state: 0 for state in JOB_STATES}
        counts.update({r["state"]: r["n"] for r in store.query("select state, count(*) as n from jobs group by state")})
        for state, n in counts.items():
            jobs.add_metric([state], float(n))
        yield jobs
        pressure = backpressure(store, self.config.worker.max_queue)
        depth = GaugeMetricFamily("appliance_queue_depth", "Jobs waiting in the queue")
        depth.add_metric([], float(pressure["queued"]))
        yield depth
        free = free_bytes(self.config.data_dir)
        over = GaugeMetricFamily("appliance_backpressure", "1 when the queue or the spool is past its limit")
        over.add_metric([], 1.0 if pressure["over"] or free < self.config.node.min_free_bytes else 0.0)
        yield over
        disk = GaugeMetricFamily("appliance_free_bytes", "Free bytes on the data directory's file system")
        disk.add_metric([], float(free))
        yield disk

        yield _histogram(
            store, "appliance_job_duration_seconds", "Time from lease to success of a job", "pipeline",
            "(finished_at - started_at)", "jobs where state = 'succeeded' and started_at > 0", JOB_BUCKETS,
        )
        tiles, seconds = self._tile_rate()
        scored = CounterMetricFamily("appliance_tiles_scored", "Tiles scored by the pathology pipeline (recent jobs)")
        scored.add_metric([], float(tiles))
        yield scored
        rate = GaugeMetricFamily("appliance_tiles_per_second", "Tiles per second over the recent pathology jobs")
        rate.add_metric([], tiles / seconds if seconds > 0 else 0.0)
        yield rate

        yield _histogram(
            store, "appliance_delivery_latency_seconds", "Time from queued to delivered per destination", "destination",
            "(delivered_at - created_at)", "deliveries where state = 'delivered'", LATENCY_BUCKETS,
        )
        deliveries = GaugeMetricFamily("appliance_deliveries", "Deliveries by destination and state",
                                       labels=["destination", "state"])
        for row in store.query("select destination, state, count(*) as n from deliveries group by destination, state"):
            deliveries.add_metric([row["destination"], row["state"]], float(row["n"]))
        for dest in self.config.destinations:
            for state in DELIVERY_STATES:
                if not store.query("select 1 from deliveries where destination = ? and state = ? limit 1",
                                   (dest.name, state)):
                    deliveries.add_metric([dest.name, state], 0.0)
        yield deliveries
        yield from _destination_kinds(self.config, store)
        yield from _slot_metrics(SlotBoard(store).read())
        failures = CounterMetricFamily("appliance_failures", "Failed jobs and dead deliveries", labels=["kind"])
        failures.add_metric(["job"], float(counts.get("failed", 0)))
        failures.add_metric(
            ["delivery"], float(store.query("select count(*) as n from deliveries where state = 'dead'")[0]["n"])
        )
        yield failures
        yield from triton_metrics()

    def _tile_rate(self) -> tuple[int, float]:
        rows = self.store.query(
            "select result from jobs where state = 'succeeded' and pipeline = 'pathology'"
            " order by finished_at desc limit ?",
            (RECENT_JOBS_FOR_RATE,),
        )
        tiles, seconds = 0, 0.0
        for row in rows:
            try:
                result = json.loads(row["result"] or "{}")
            except ValueError:
                continue
            tiles += int(result.get("tiles_scored", 0))
            seconds += float(result.get("seconds", {}).get("pipeline", 0.0))
        return tiles, seconds


def _destination_kinds(config: Config, store: StateStore) -> Iterator[Metric]:
    """Each configured destination's kind (dimse: C-STORE, dicomweb: STOW-RS), and deliveries by kind and state."""
    kinds: dict[str, str] = {d.name: d.kind for d in config.destinations}
    info = GaugeMetricFamily("appliance_destination_kind", "1 for each configured destination and its kind",
                             labels=["destination", "kind"])
    for name, kind in kinds.items():
        info.add_metric([name, kind], 1.0)
    yield info
    by_kind = {(kind, state): 0 for kind in sorted(set(kinds.values())) for state in DELIVERY_STATES}
    for row in store.query("select destination, state, count(*) as n from deliveries group by destination, state"):
        kind = kinds.get(row["destination"], "unconfigured")
        by_kind[(kind, row["state"])] = by_kind.get((kind, row["state"]), 0) + row["n"]
    family = GaugeMetricFamily("appliance_deliveries_by_kind", "Deliveries by destination kind and state",
                               labels=["kind", "state"])
    for (kind, state), n in by_kind.items():
        family.add_metric([kind, state], float(n))
    yield family


def triton_metrics() -> Iterator[Metric]:
    """Per-endpoint state of the Triton pools loaded in this process (URLs and counters only)."""
    from engines.backends import endpoint_states

    labels = ["endpoint", "model"]
    healthy = GaugeMetricFamily("appliance_triton_endpoint_healthy", "1 when the endpoint is in the pool", labels=labels)
    inflight = GaugeMetricFamily("appliance_triton_endpoint_in_flight", "Requests in flight", labels=labels)
    latency = GaugeMetricFamily("appliance_triton_endpoint_latency_seconds", "Moving average of request latency",
                                labels=labels)
    requests = CounterMetricFamily("appliance_triton_endpoint_requests", "Requests answered", labels=labels)
    errors = CounterMetricFamily("appliance_triton_endpoint_errors", "Failures that took the endpoint out",
                                 labels=labels)
    for s in endpoint_states():
        key = [s.url, s.model]
        healthy.add_metric(key, 1.0 if s.healthy else 0.0)
        inflight.add_metric(key, float(s.in_flight))
        latency.add_metric(key, s.latency_seconds)
        requests.add_metric(key, float(s.requests))
        errors.add_metric(key, float(s.errors))
    yield from (healthy, inflight, latency, requests, errors)


def _slot_metrics(slots: list[dict[str, Any]]) -> Iterator[Metric]:
    """Each device slot: busy or not, the job it runs, busy fraction, preemptions and resumes."""
    labels = ["slot", "device"]
    busy = GaugeMetricFamily("appliance_slot_busy", "1 while the device slot runs a job", labels=labels)
    running = GaugeMetricFamily("appliance_slot_job", "The job a device slot runs (opaque job id)",
                                labels=[*labels, "job", "pipeline"])
    ratio = GaugeMetricFamily("appliance_slot_utilisation_ratio",
                              "Busy fraction of the device slot since the service started", labels=labels)
    preempted = CounterMetricFamily("appliance_slot_preemptions", "Jobs that yielded the slot to more urgent work",
                                    labels=labels)
    resumed = CounterMetricFamily("appliance_slot_resumes",
                                  "Jobs the slot resumed after a preemption or an interruption", labels=labels)
    for row in slots:
        key = [str(row["name"]), str(row["device"])]
        busy.add_metric(key, 1.0 if row["busy"] else 0.0)
        if row["busy"]:
            running.add_metric([*key, str(row["job_id"]), str(row["pipeline"] or "")], 1.0)
        ratio.add_metric(key, float(row["utilisation"]))
        preempted.add_metric(key, float(row["preemptions"]))
        resumed.add_metric(key, float(row["resumes"]))
    yield from (busy, running, ratio, preempted, resumed)


def metrics_registry(config: Config, store: StateStore) -> CollectorRegistry:
    """A registry of its own holding only the appliance's collector."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StoreCollector(config, store))
    return registry
