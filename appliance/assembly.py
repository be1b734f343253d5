"""Study assembly: complete series and studies become jobs (shared/DESIGN.md, "Data flow").

Every tick routes the ``open`` series (:mod:`appliance.routing`), then:

- a ``pathology`` route makes one job per series once no instance arrived for
  the route's ``stable_seconds``;
- a ``breast_mri`` route makes one job per study once every series of the study
  routed to it is quiet for ``stable_seconds`` and each ``required_series``
  pattern (exact Series Description or ``re:<regex>``) matches one of them. A
  study older than ``force_complete_seconds`` (counted from its first instance;
  0 never forces) no longer waits for missing required series, though its
  series must still be quiet.

Series states: ``open`` (not routed yet) -> ``routed`` -> ``assembled`` (its job
exists), or ``unrouted``. The job id derives from the pipeline and the series
or study UID (:func:`appliance.jobs.job_id_for`), and the job row and the
series' state change in one transaction, so a series or study never gets two
jobs, across restarts too. A series that arrives after its study's job exists
is marked ``assembled`` and logged. The job's priority is the route's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from typing import Any

from appliance.config import Config, RouteSettings
from appliance.jobs import JobQueue, job_id_for
from appliance.routing import opaque_id, route_open_series, value_matches
from appliance.state import StateStore

__all__ = ["Assembler", "AssemblyComponent", "assembly_component", "missing_required"]

logger = logging.getLogger(__name__)


def missing_required(required: Sequence[str], descriptions: Sequence[str]) -> list[str]:
    """The ``required`` patterns that no Series Description in ``descriptions`` matches."""
    return [p for p in required if not any(value_matches(p, d or "") for d in descriptions)]


class Assembler:
    """Turns quiet series and complete studies into queued jobs; :meth:`tick` does one pass."""

    def __init__(
        self,
        routes: Sequence[RouteSettings],
        store: StateStore,
        queue: JobQueue,
        clock: Callable[[], float] = time.time,
        on_job: Callable[[str], None] | None = None,
    ) -> None:
        self.routes = tuple(routes)
        self.store = store
        self.queue = queue
        self.clock = clock
        self.on_job = on_job

    def tick(self) -> list[str]:
        """Route open series and create the jobs that are due; return the new job ids."""
        route_open_series(self.store, self.routes)
        now = self.clock()
        rows = self.store.series.routed()
        by_route: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for row in rows:
            index = row["route"]
            if index is None or not 0 <= index < len(self.routes):
                logger.warning("series %s names route %s, which no longer exists", opaque_id(row["series_uid"]), index)
                continue
            by_route[index].append(row)
        created: list[str] = []
        for index, series in by_route.items():
            route = self.routes[index]
            if route.pipeline == "pathology":
                created += self._series_jobs(route, series, now)
            else:
                created += self._study_jobs(route, series, now)
        for job_id in created:
            if self.on_job is not None:
                self.on_job(job_id)
        return created

    def _series_jobs(self, route: RouteSettings, series: list[dict[str, Any]], now: float) -> list[str]:
        created = []
        for row in series:
            if now - row["last_received"] < route.stable_seconds:
                continue
            job_id = self._create(route, row["study_uid"], [row["series_uid"]], key=row["series_uid"])
            if job_id:
                created.append(job_id)
        return created

    def _study_jobs(self, route: RouteSettings, series: list[dict[str, Any]], now: float) -> list[str]:
        studies: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for row in series:
            studies[row["study_uid"]].append(row)
        created = []
        for study_uid, members in studies.items():
            if self.queue.exists(job_id_for(route.pipeline, study_uid)):
                self._create(route, study_uid, [m["series_uid"] for m in members], key=study_uid)
                continue  # late series of a study whose job exists: kept, no second job
            if not all(now - m["last_received"] >= route.stable_seconds for m in members):
                continue
            missing = missing_required(route.required_series, [m["series_description"] for m in members])
            if missing:
                first = min(m["study_first"] or m["first_received"] for m in members)
                forced = route.force_complete_seconds > 0 and now - first >= route.force_complete_seconds
                if not forced:
                    continue
                logger.warning(
                    "study %s forced complete after %.0f s, missing %d required series",
                    opaque_id(study_uid, "T"), now - first, len(missing),
                )
            job_id = self._create(route, study_uid, [m["series_uid"] for m in members], key=study_uid)
            if job_id:
                created.append(job_id)
        return created

    def _create(self, route: RouteSettings, study_uid: str, series_uids: list[str], key: str) -> str | None:
        """Queue the job and mark its series assembled in one transaction; None if the job existed."""
        job_id = job_id_for(route.pipeline, key)
        with self.store.atomic():
            _, created = self.queue.enqueue(route.pipeline, study_uid, series_uids, route.priority, job_id=job_id)
            self.store.series.assemble(series_uids)
            if route.pipeline == "breast_mri":
                self.store.studies.assemble(study_uid)
        if not created:
            logger.info("job %s already exists; %d late series kept without a new job", job_id, len(series_uids))
            return None
        return job_id


class AssemblyComponent:
    """Runs :meth:`Assembler.tick` every ``interval`` seconds in a thread (service component ``assembly``)."""

    name = "assembly"

    def __init__(self, assembler: Assembler, interval: float = 1.0) -> None:
        self.assembler = assembler
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self._thread is not None and self._thread.is_alive():
            return
        self._stop.clear()
        self._thread = threading.Thread(target=self._loop, name="assembly", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.assembler.tick()
            except Exception:  # a bad row must not stop assembly of the others
                logger.exception("assembly tick failed")
            self._stop.wait(self.interval)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None


def assembly_component(
    config: Config, store: StateStore, on_job: Callable[[str], None] | None = None
) -> AssemblyComponent:
    """The assembly component for ``appliance.service``; ticks at a quarter of the shortest stable time (0.2-1 s)."""
    queue = JobQueue(store, config.worker.lease_seconds, config.worker.max_attempts)
    shortest = min((r.stable_seconds for r in config.routes), default=1.0)
    interval = min(1.0, max(0.2, shortest / 4))
    return AssemblyComponent(Assembler(config.routes, store, queue, on_job=on_job), interval)
