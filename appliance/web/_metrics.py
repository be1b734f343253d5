"""Prometheus metrics, computed from the state store at scrape time (no patient data, invariant 4).

Counts and histograms come from the rows themselves, so they survive restarts
and agree with ``appliance status``. Each app gets its own
:class:`~prometheus_client.CollectorRegistry`.
"""

from __future__ import annotations

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
from appliance.state import DELIVERY_STATES, DeliveryState, JobState, StateStore
from dicom_node.store import INGEST_COUNTS

__all__ = [
    "INGEST_TRANSPORTS", "JOB_BUCKETS", "LATENCY_BUCKETS", "StoreCollector", "free_bytes", "ingest_by_transport",
    "ingest_metrics", "metrics_registry", "triton_metrics",
]

JOB_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0)
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0)
RECENT_JOBS_FOR_RATE = 20
#: how instances arrive: DIMSE C-STORE and DICOMweb STOW-RS (labels of the ingest counters)
INGEST_TRANSPORTS = ("dimse", "stowrs")


def free_bytes(path: Path) -> int:
    """Free bytes on the file system holding ``path`` (or its nearest existing parent)."""
    probe = Path(path).absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    return int(shutil.disk_usage(probe).free)


def _histogram(
    name: str, doc: str, label: str, rows: list[dict[str, Any]], buckets: tuple[float, ...]
) -> HistogramMetricFamily:
    """A histogram per ``label`` from the store's bucket counts (``label``, ``n``, ``total``, ``b<i>``)."""
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
        counts = self.store.jobs.count_by_state()
        yield from self._queue_metrics(counts)
        yield from self._throughput_metrics()
        yield from self._delivery_metrics()
        yield from _slot_metrics(SlotBoard(self.store).read())
        yield from self._failure_metrics(counts)
        yield from triton_metrics()
        yield from ingest_metrics()

    def _queue_metrics(self, counts: dict[str, int]) -> Iterator[Metric]:
        """Instances, studies, jobs by state, queue depth, backpressure and free space."""
        store = self.store
        instances = CounterMetricFamily("appliance_instances_received", "DICOM instances stored by the node")
        instances.add_metric([], float(store.instances.count()))
        yield instances
        studies = GaugeMetricFamily("appliance_studies", "Studies known to the appliance")
        studies.add_metric([], float(store.studies.count()))
        yield studies

        jobs = GaugeMetricFamily("appliance_jobs", "Jobs by state", labels=["state"])
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

    def _throughput_metrics(self) -> Iterator[Metric]:
        """Job durations and the pathology pipeline's tile rate over recent jobs."""
        yield _histogram(
            "appliance_job_duration_seconds", "Time from lease to success of a job", "pipeline",
            self.store.jobs.duration_histogram(JOB_BUCKETS), JOB_BUCKETS,
        )
        tiles, seconds = self._tile_rate()
        scored = CounterMetricFamily("appliance_tiles_scored", "Tiles scored by the pathology pipeline (recent jobs)")
        scored.add_metric([], float(tiles))
        yield scored
        rate = GaugeMetricFamily("appliance_tiles_per_second", "Tiles per second over the recent pathology jobs")
        rate.add_metric([], tiles / seconds if seconds > 0 else 0.0)
        yield rate

    def _delivery_metrics(self) -> Iterator[Metric]:
        """Delivery latency, deliveries by destination and state (zeros included), and by kind."""
        store = self.store
        yield _histogram(
            "appliance_delivery_latency_seconds", "Time from queued to delivered per destination", "destination",
            store.deliveries.latency_histogram(LATENCY_BUCKETS), LATENCY_BUCKETS,
        )
        deliveries = GaugeMetricFamily("appliance_deliveries", "Deliveries by destination and state",
                                       labels=["destination", "state"])
        by_destination = store.deliveries.count_by_destination()
        for (name, state), n in by_destination.items():
            deliveries.add_metric([name, state], float(n))
        for dest in self.config.destinations:
            for state in DELIVERY_STATES:
                if (dest.name, state) not in by_destination:
                    deliveries.add_metric([dest.name, state], 0.0)
        yield deliveries
        yield from _destination_kinds(self.config, store)

    def _failure_metrics(self, counts: dict[str, int]) -> Iterator[Metric]:
        """Failed jobs, dead deliveries and series that could not be routed."""
        store = self.store
        failures = CounterMetricFamily("appliance_failures", "Failed jobs, dead deliveries, series that could not be routed",
                                       labels=["kind"])
        failures.add_metric(["job"], float(counts[JobState.FAILED]))
        failures.add_metric(["delivery"], float(store.deliveries.count_by_state()[DeliveryState.DEAD]))
        failures.add_metric(["series"], float(store.series.failed_count()))
        yield failures

    def _tile_rate(self) -> tuple[int, float]:
        tiles, seconds = 0, 0.0
        for result in self.store.jobs.recent_results("pathology", RECENT_JOBS_FOR_RATE):
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
    by_kind: dict[tuple[str, str], int] = {(kind, str(state)): 0 for kind in sorted(set(kinds.values()))
                                           for state in DELIVERY_STATES}
    for (destination, state), n in store.deliveries.count_by_destination().items():
        kind = kinds.get(destination, "unconfigured")
        by_kind[(kind, state)] = by_kind.get((kind, state), 0) + n
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


def ingest_by_transport() -> dict[str, dict[str, int]]:
    """Instances stored and failed by this process, per transport (``{"dimse": {"stored": N, "failed": N}, ...}``)."""
    counts = INGEST_COUNTS.snapshot()
    return {transport: {outcome: counts.get((transport, outcome), 0) for outcome in ("stored", "failed")}
            for transport in INGEST_TRANSPORTS}


def ingest_metrics() -> Iterator[Metric]:
    """Instances stored and refused since the service started, by transport (C-STORE beside STOW-RS)."""
    family = CounterMetricFamily("appliance_ingest_instances",
                                 "Instances received since start by transport and outcome",
                                 labels=["transport", "outcome"])
    for transport, outcomes in ingest_by_transport().items():
        for outcome, n in outcomes.items():
            family.add_metric([transport, outcome], float(n))
    yield family


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
