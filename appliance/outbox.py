"""The outbox: result files waiting for delivery, as rows of the state store's ``deliveries`` table.

Reports write their files under ``data_dir/outbox/`` and call :func:`enqueue`,
which creates one ``pending`` row per destination; the same SOP Instance UID
is queued once per destination however often it is enqueued. The delivery
sender (:class:`dicom_node.delivery.DeliverySender`) leases due rows through
:class:`Outbox` and marks each ``delivered``, for retry, or ``dead`` with the
reason. :func:`delivery_component` builds the sender from the configuration
for ``appliance serve``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from pathlib import Path

from appliance.config import Config, DestinationSettings
from appliance.errors import ApplianceError
from appliance.state import StateStore
from dicom_node.delivery import DeliverySender, PendingDelivery, RetryPolicy
from dicom_node.scu import Destination, StorageSCU
from dicom_node.stow_client import StowClient, WebDestination

__all__ = [
    "Outbox",
    "delivery_component",
    "destination_from",
    "enqueue",
    "outbox_dir",
    "stow_client_for",
    "web_destination_from",
]

logger = logging.getLogger(__name__)

#: how long a leased row is hidden from other leases: only matters after a crash (then
#: the row is sent again, same SOP Instance UID); one worker per destination never
#: leases a row it is still sending
DEFAULT_LEASE_SECONDS = 60.0


def outbox_dir(data_dir: Path) -> Path:
    """Where result files wait for delivery: ``data_dir/outbox``."""
    return Path(data_dir) / "outbox"


def enqueue(
    store: StateStore, job_id: str, path: Path | str, sop_instance_uid: str, destinations: Iterable[str]
) -> list[int]:
    """Queue ``path`` for every destination; return the ids of the rows (new or already there).

    Idempotent: a (destination, SOP Instance UID) pair that is already queued,
    delivered or dead is left as it is.
    """
    names = list(dict.fromkeys(destinations))
    if not sop_instance_uid:
        raise ApplianceError(f"cannot queue {str(path)!r} for delivery without a SOP Instance UID")
    ids = store.deliveries.queue(job_id, str(path), sop_instance_uid, names, time.time())
    logger.info("job %s: queued a result for %d destination(s)", job_id, len(names))
    return ids


class Outbox:
    """The delivery queue over the state store; satisfies ``dicom_node.delivery.DeliveryQueue``."""

    def __init__(self, store: StateStore, lease_seconds: float = DEFAULT_LEASE_SECONDS) -> None:
        self._store = store
        self._lease = lease_seconds

    def lease(self, destination: str, limit: int, now: float) -> list[PendingDelivery]:
        """Due pending rows for ``destination``, oldest first, held for ``lease_seconds``."""
        rows = self._store.deliveries.lease(destination, limit, now, now + self._lease)
        return [
            PendingDelivery(
                id=r["id"],
                destination=r["destination"],
                path=Path(r["path"]),
                sop_instance_uid=r["sop_instance_uid"],
                attempts=r["attempts"] or 0,
                created_at=r["created_at"],
                study_uid=r["study_uid"],
            )
            for r in rows
        ]

    def mark_delivered(self, delivery_id: int, now: float) -> None:
        self._store.deliveries.delivered(delivery_id, now)

    def mark_retry(self, delivery_id: int, reason: str, next_attempt_at: float) -> None:
        self._store.deliveries.retry(delivery_id, reason, next_attempt_at)

    def mark_dead(self, delivery_id: int, reason: str) -> None:
        self._store.deliveries.dead(delivery_id, reason)

    def pending_destinations(self) -> set[str]:
        """Destinations that have pending rows (configured or not)."""
        return self._store.deliveries.pending_destinations()


def destination_from(settings: DestinationSettings, config: Config) -> Destination:
    """The SCU's view of a configured ``dimse`` destination; ``tls = true`` uses the node's TLS files."""
    if settings.kind != "dimse" or settings.ae_title is None:
        raise ApplianceError(f"destination {settings.name!r} is of kind {settings.kind!r}, not a DIMSE storage SCP")
    context = None
    if settings.tls:
        from dicom_node.tls import client_context

        tls = config.node.tls
        context = client_context(ca=tls.ca or None, cert=tls.cert or None, key=tls.key or None)
    return Destination(settings.name, settings.ae_title, settings.host, settings.port, ssl_context=context)


def web_destination_from(settings: DestinationSettings) -> WebDestination:
    """The STOW-RS client's view of a configured ``dicomweb`` destination."""
    if settings.kind != "dicomweb":
        raise ApplianceError(f"destination {settings.name!r} is of kind {settings.kind!r}, not a DICOMweb service")
    user, _, password = settings.basic.partition(":")
    return WebDestination(
        settings.name, settings.url, token=settings.token, basic=(user, password) if settings.basic else None,
        cert=settings.cert, key=settings.key, ca=settings.ca,
    )


def scu_for(config: Config) -> StorageSCU:
    """An SCU calling as our AE title, bounded by ``[delivery] timeout_seconds``."""
    return StorageSCU(config.node.ae_title, timeout=config.delivery.timeout_seconds)


def stow_client_for(config: Config) -> StowClient:
    """A STOW-RS client whose every request is bounded by ``[delivery] timeout_seconds``."""
    return StowClient(timeout=config.delivery.timeout_seconds)


def delivery_component(config: Config, store: StateStore) -> DeliverySender | None:
    """The ``delivery`` service component; None when no destination is configured."""
    if not config.destinations:
        outbox = Outbox(store)
        if outbox.pending_destinations():
            logger.warning("deliveries are pending but no destination is configured; they wait")
        return None
    destinations: dict[str, Destination | WebDestination] = {
        d.name: web_destination_from(d) if d.kind == "dicomweb" else destination_from(d, config)
        for d in config.destinations
    }
    outbox = Outbox(store)
    unknown = outbox.pending_destinations() - set(destinations)
    if unknown:
        logger.warning("deliveries pending for unconfigured destination(s) %s wait", ", ".join(sorted(unknown)))
    settings = config.delivery
    policy = RetryPolicy(settings.initial_backoff_seconds, settings.max_backoff_seconds, settings.max_age_seconds)
    return DeliverySender(outbox, destinations, scu_for(config), policy, senders={"dicomweb": stow_client_for(config)})
