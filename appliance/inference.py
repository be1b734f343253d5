"""The service's ``worker`` component: the scheduler wired to the pipelines, the report builder and the outbox.

:func:`worker_component` builds one :class:`~appliance.scheduler.Scheduler` with
a :class:`~appliance.worker.Worker` per ``[worker] devices`` slot. Each worker
runs the job's :class:`~appliance.pipelines.Pipeline`, hands the result to
:func:`default_report` (the SR and heat-map objects, written durably into
``data_dir/outbox``) and queues every file written for every destination
(:func:`default_deliver`, through :mod:`appliance.outbox`).
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Mapping, Sequence
from pathlib import Path

import pydicom

from appliance.config import Config
from appliance.findings import StudyResult
from appliance.jobs import Job, JobQueue
from appliance.outbox import enqueue, outbox_dir
from appliance.pipelines import pipeline_functions, pipeline_tasks, registry
from appliance.reports.build import build_reports
from appliance.reports.sr import DeviceInfo
from appliance.reports.unavailable import unavailable_reporter
from appliance.scheduler import Scheduler
from appliance.slots import plan_devices
from appliance.state import StateStore
from appliance.worker import DeliverFn, EngineSource, PipelineFn, ReportFn
from engines.registry import Registry

__all__ = ["default_deliver", "default_report", "worker_component"]

logger = logging.getLogger(__name__)


def worker_component(
    config: Config,
    store: StateStore,
    pipelines: Mapping[str, PipelineFn] | None = None,
    report: ReportFn | None = None,
    deliver: DeliverFn | None = None,
    source: EngineSource | None = None,
) -> Scheduler:
    """The scheduler with one worker per ``[worker] devices`` slot, for ``appliance.service``.

    ``pipelines`` (name -> the callable a worker runs) defaults to the registry (:func:`appliance.pipelines.registry`);
    ``report`` and ``deliver`` to :func:`default_report` and :func:`default_deliver`;
    ``source`` (the engines) to the registry under ``data_dir/engines``.
    """
    if source is None:
        source = Registry(config.data_dir / "engines", config.trusted_keys_dir, **config.engine_options)
    registered = registry(config)
    settings = config.worker
    queue = JobQueue(store, settings.lease_seconds, settings.max_attempts)
    deliver = deliver if deliver is not None else default_deliver(config, store)
    return Scheduler(
        store,
        queue,
        pipelines if pipelines is not None else pipeline_functions(registered),
        report if report is not None else default_report(config),
        deliver,
        source,
        plan_devices(settings.devices, config.engines.cpu_threads, settings.device_memory_budget_mb * 2**20),
        pipeline_tasks(registered),
        data_dir=config.data_dir,
        preemption=settings.preemption,
        max_wait_seconds=settings.max_wait_seconds,
        on_study_failure=unavailable_reporter(config, store, deliver),  # issue 13: failures reported to PACS
    )


def default_report(config: Config) -> ReportFn:
    """:func:`~appliance.reports.build.build_reports` into ``data_dir/outbox``, as this device."""

    def report(result: StudyResult, job: Job) -> Sequence[Path]:
        device = DeviceInfo.from_serial(socket.gethostname()[:64] or "appliance", name=config.node.ae_title)
        return build_reports(result, outbox_dir(config.data_dir), device)

    return report


def default_deliver(config: Config, store: StateStore) -> DeliverFn:
    """``appliance.outbox.enqueue`` of every file for every destination; returns the rows queued."""

    def deliver(job: Job, files: Sequence[Path]) -> int:
        names = [d.name for d in config.destinations]
        if not names:
            logger.warning("job %s: no destinations configured; %d result file(s) stay in the outbox", job.id, len(files))
            return 0
        rows = 0
        for path in files:
            rows += len(enqueue(store, job.id, path, _sop_instance_uid(path), names))
        return rows

    return deliver


def _sop_instance_uid(path: Path) -> str:
    """The file's SOP Instance UID (reports name files ``<SOP Instance UID>.dcm``; read it to be sure)."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"])
    return str(ds.SOPInstanceUID)
