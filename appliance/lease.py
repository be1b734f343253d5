"""A running job's lease: heartbeat, progress, and the interruptions a pipeline sees at a batch boundary.

The worker's progress callback (:meth:`JobLease.progress`) raises
:class:`JobInterrupted` when the job must stop (the worker is stopping, the
lease was lost) and :class:`JobPreempted` when the job was asked to yield its
slot to more urgent work. Pipelines let both propagate; the worker puts the job
back in the queue without counting an attempt.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import threading
import time

from appliance.errors import ApplianceError
from appliance.jobs import Job, JobQueue

__all__ = ["PROGRESS_INTERVAL_SECONDS", "JobInterrupted", "JobLease", "JobPreempted", "orphaned_lease"]

logger = logging.getLogger(__name__)

PROGRESS_INTERVAL_SECONDS = 0.5


class JobInterrupted(ApplianceError):
    """The worker is stopping or lost its lease: the job goes back to the queue."""


class JobPreempted(JobInterrupted):
    """The job yields its slot to more urgent work at a batch boundary: back to the queue ahead of its peers."""


class JobLease:
    """The running job's lease: a heartbeat thread plus throttled progress that can interrupt the job."""

    def __init__(
        self, queue: JobQueue, job: Job, owner: str, stopping: threading.Event, yield_requested: threading.Event
    ) -> None:
        self.queue, self.job, self.owner, self.stopping = queue, job, owner, stopping
        self.yield_requested = yield_requested
        self.lost = threading.Event()
        self._done = threading.Event()
        self._last_progress = 0.0
        self._thread = threading.Thread(target=self._beat, name=f"lease-{job.id}", daemon=True)

    def __enter__(self) -> JobLease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(timeout=5)

    def _beat(self) -> None:
        interval = max(0.05, self.queue.lease_seconds / 3)
        while not self._done.wait(interval):
            try:
                if not self.queue.heartbeat(self.job.id, self.owner):
                    logger.warning("job %s: lease lost", self.job.id)
                    self.lost.set()
                    return
            except Exception:
                logger.exception("job %s: heartbeat failed", self.job.id)

    def check(self) -> None:
        if self.lost.is_set():
            raise JobInterrupted(f"job {self.job.id} lost its lease")
        if self.stopping.is_set():
            raise JobInterrupted(f"job {self.job.id} interrupted: the worker is stopping")

    def progress(self, done: int, total: int) -> None:
        """Record progress; at a boundary with work left, yield when asked to (:class:`JobPreempted`)."""
        self.check()
        if self.yield_requested.is_set() and done < total:
            if not self.queue.progress(self.job.id, self.owner, done, total):
                self.lost.set()
                self.check()
            raise JobPreempted(f"job {self.job.id} yielded its slot to more urgent work at {done} of {total}")
        now = time.monotonic()
        if done >= total or now - self._last_progress >= PROGRESS_INTERVAL_SECONDS:
            self._last_progress = now
            if not self.queue.progress(self.job.id, self.owner, done, total):
                self.lost.set()
                self.check()


def orphaned_lease(owner: str, mine: str) -> bool:
    """True for a lease of a worker process on this host that no longer runs (killed, crashed).

    Called before a worker leases anything, so a lease in our own process's name (a PID
    reused after a container restart) is orphaned too. Other hosts' leases wait for expiry.
    Owners read ``host:pid:worker`` (or ``workerN``, one per device slot).
    """
    parts = owner.rsplit(":", 2)
    if len(parts) != 3 or not re.fullmatch(r"worker\d*", parts[2]) or not parts[1].isdigit():
        return False
    host, pid = parts[0], int(parts[1])
    if host != socket.gethostname():
        return False
    if pid == os.getpid() or owner == mine:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False
