"""The sender loop: C-STORE pending deliveries, retry with backoff, give up after a maximum age.

Deliveries come from a queue that satisfies :class:`DeliveryQueue` (the
appliance's outbox over its state store; this package never imports it). One
worker thread per destination sends that destination's due deliveries (over one
association per batch, or one STOW-RS request per file), so a dead or slow PACS only
ever delays its own rows. The sender of a destination is picked by its ``kind``:
:class:`DimseSender` (C-STORE, ``dicom_node.scu``) for ``"dimse"``, and whatever
:class:`FileSender` the caller registers for another kind
(``dicom_node.stow_client.StowClient`` for ``"dicomweb"``).

A failure (refused, rejected or aborted association, timeout, non-success
status) is retried after ``initial * 2**(attempts-1)`` seconds, capped at
``max_backoff`` and scaled by a random factor in [0.5, 1] (jitter, so many rows
do not retry in lock step); once the row is older than ``max_age`` it is marked
dead with the last reason. A file that cannot be read at all, or one the destination
refused for good (:class:`~dicom_node.errors.DeliveryRefused`), is dead at once.
A row whose send was not confirmed (process killed) is sent again with the same
SOP Instance UID, which the PACS de-duplicates.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dicom_node.errors import DeliveryFailed, DeliveryRefused, SenderStopped
from dicom_node.scu import Destination, StorageSCU, StoreResult, UnsendableFile

__all__ = [
    "DeliveryQueue",
    "DeliverySender",
    "DimseSender",
    "FileSender",
    "Outcome",
    "PendingDelivery",
    "RetryPolicy",
    "Target",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PendingDelivery:
    """One file to send to one destination, as the queue hands it out."""

    id: int
    destination: str
    path: Path
    sop_instance_uid: str
    attempts: int  #: attempts made before this one
    created_at: float  #: epoch seconds; the maximum age counts from here
    study_uid: str = ""  #: the study the result belongs to (its job's), "" when unknown


@dataclass(frozen=True)
class Outcome:
    """What the sender recorded for one delivery: ``delivered``, ``retry`` or ``dead``."""

    delivery: PendingDelivery
    state: str
    reason: str = ""
    next_attempt_at: float | None = None


class DeliveryQueue(Protocol):
    """What the sender needs from a queue of deliveries (``appliance.outbox.Outbox``)."""

    def lease(self, destination: str, limit: int, now: float) -> list[PendingDelivery]:
        """Up to ``limit`` due deliveries for ``destination``, held so no one else sends them."""
        ...

    def mark_delivered(self, delivery_id: int, now: float) -> None: ...

    def mark_retry(self, delivery_id: int, reason: str, next_attempt_at: float) -> None: ...

    def mark_dead(self, delivery_id: int, reason: str) -> None: ...


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter, capped; rows older than ``max_age`` die."""

    initial: float = 2.0
    max_backoff: float = 300.0
    max_age: float = 24 * 3600.0

    def __post_init__(self) -> None:
        for name in ("initial", "max_backoff", "max_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"RetryPolicy.{name} must be positive, got {getattr(self, name)!r}")

    def backoff(self, attempts: int, rng: random.Random) -> float:
        """Seconds to wait after the ``attempts``-th failed attempt (1-based)."""
        base = min(self.max_backoff, self.initial * 2.0 ** max(0, min(attempts - 1, 62)))
        return base * rng.uniform(0.5, 1.0)


Listener = Callable[[Outcome], None]


class Target(Protocol):
    """A destination of any kind: named, and of the kind that picks its :class:`FileSender`."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


class FileSender(Protocol):
    """Sends one batch of files to one destination; one StoreResult per delivery, in order."""

    def send_batch(
        self, destination: Any, batch: Sequence[PendingDelivery], stop: threading.Event
    ) -> list[StoreResult]: ...

    def abort_all(self) -> None:
        """Stop what is in flight (from another thread): the sender is stopping."""
        ...


class DimseSender:
    """The :class:`FileSender` of ``"dimse"`` destinations: C-STORE over one association per batch."""

    def __init__(self, scu: StorageSCU) -> None:
        self.scu = scu

    def send_batch(
        self, destination: Destination, batch: Sequence[PendingDelivery], stop: threading.Event
    ) -> list[StoreResult]:
        return self.scu.send_files(destination, [d.path for d in batch], stop=stop)

    def abort_all(self) -> None:
        self.scu.abort_all()


class DeliverySender:
    """Service component ``delivery``: one worker thread per configured destination.

    ``start()`` starts the workers, ``stop()`` stops them within a few seconds
    (an association in progress is aborted; its rows stay pending and are sent
    again). ``wake()`` makes idle workers look for due rows now.
    """

    name = "delivery"

    def __init__(
        self,
        queue: DeliveryQueue,
        destinations: Mapping[str, Target],
        scu: StorageSCU,
        policy: RetryPolicy = RetryPolicy(),
        batch_size: int = 200,
        poll_interval: float = 1.0,
        listener: Listener | None = None,
        rng: random.Random | None = None,
        senders: Mapping[str, FileSender] | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self._queue = queue
        self._destinations = dict(destinations)
        self._senders: dict[str, FileSender] = {"dimse": DimseSender(scu), **(senders or {})}
        unsent = sorted({d.kind for d in self._destinations.values()} - set(self._senders))
        if unsent:
            known = ", ".join(self._senders)
            raise ValueError(f"no sender for destinations of kind {', '.join(unsent)}; known: {known}")
        self._policy = policy
        self._batch_size = batch_size
        self._poll = poll_interval
        self._listener = listener
        self._rng = rng or random.Random()
        self._stop = threading.Event()
        self._wakeups = {name: threading.Event() for name in self._destinations}
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        if self._threads:
            return
        self._stop.clear()
        for name, destination in self._destinations.items():
            thread = threading.Thread(
                target=self._run, args=(destination,), name=f"delivery-{name}", daemon=True
            )
            self._threads.append(thread)
            thread.start()
        logger.info("delivery sender started for %d destination(s)", len(self._threads))

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        for event in self._wakeups.values():
            event.set()
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            while thread.is_alive() and time.monotonic() < deadline:
                for sender in self._senders.values():  # again each round: a worker may have just begun sending
                    sender.abort_all()
                thread.join(0.2)
            if thread.is_alive():
                logger.warning("delivery worker %s did not stop within %.0f s", thread.name, timeout)
        self._threads = []

    def wake(self) -> None:
        """New rows were queued: look for due deliveries now instead of at the next poll."""
        for event in self._wakeups.values():
            event.set()

    def run_once(self, destination: str, now: float | None = None) -> list[Outcome]:
        """Send one batch of due deliveries to ``destination`` (what a worker does each round)."""
        dest = self._destinations[destination]
        batch = self._queue.lease(destination, self._batch_size, time.time() if now is None else now)
        if not batch:
            return []
        results = self._senders[dest.kind].send_batch(dest, batch, self._stop)
        return [self._record(d, r) for d, r in zip(batch, results, strict=True)]

    def _run(self, destination: Target) -> None:
        wakeup = self._wakeups[destination.name]
        while not self._stop.is_set():
            wakeup.clear()
            try:
                outcomes = self.run_once(destination.name)
            except Exception:  # noqa: BLE001 - a worker must survive anything and try again later
                logger.exception("delivery worker for %s failed; retrying", destination.name)
                outcomes = []
            if len(outcomes) < self._batch_size:
                wakeup.wait(self._poll)

    def _record(self, delivery: PendingDelivery, result: StoreResult) -> Outcome:
        now = time.time()
        if result.ok:
            self._queue.mark_delivered(delivery.id, now)
            outcome = Outcome(delivery, "delivered")
            logger.debug("delivery %d to %s delivered", delivery.id, delivery.destination)
        else:
            outcome = self._failed(delivery, result.error or DeliveryFailed("unknown failure"), now)
        if self._listener is not None:
            try:
                self._listener(outcome)
            except Exception:  # noqa: BLE001 - a listener never breaks delivery
                logger.exception("delivery listener failed")
        return outcome

    def _failed(self, delivery: PendingDelivery, error: DeliveryFailed, now: float) -> Outcome:
        reason = str(error)
        attempts = delivery.attempts + 1
        if self._stop.is_set() and isinstance(error, SenderStopped):
            self._queue.mark_retry(delivery.id, reason, now)
            return Outcome(delivery, "retry", reason, now)
        final = isinstance(error, (UnsendableFile, DeliveryRefused))
        if final or now - delivery.created_at >= self._policy.max_age:
            dead = reason if final else f"gave up after {attempts} attempts: {reason}"
            self._queue.mark_dead(delivery.id, dead)
            logger.warning("delivery %d to %s is dead: %s", delivery.id, delivery.destination, dead)
            return Outcome(delivery, "dead", dead)
        wait = self._policy.backoff(attempts, self._rng)
        # never schedule past the moment the row dies, so it is marked dead on time
        next_at = min(now + wait, delivery.created_at + self._policy.max_age)
        self._queue.mark_retry(delivery.id, reason, next_at)
        logger.info(
            "delivery %d to %s failed (attempt %d), retry in %.1f s: %s",
            delivery.id, delivery.destination, attempts, next_at - now, reason,
        )
        return Outcome(delivery, "retry", reason, next_at)

