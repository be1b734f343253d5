"""Ingest: records of durable instances become instance, series and study rows, and the node component.

:class:`StoreSink` is the :class:`dicom_node.scp.InstanceSink` the storage SCP
commits to. One call is one transaction: every instance row (a SOP Instance
UID already present under the same study and series is ignored, so a re-send is
stored once; under another study or series the commit raises
:class:`~dicom_node.errors.DuplicateInstance`), the series row
(created ``open``; ``instance_count`` and ``last_received`` updated) and the
study row. :func:`node_component` builds the storage SCP from the configuration.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from appliance.config import Config
from appliance.state import StateStore
from dicom_node.access import AccessPolicy, Peer
from dicom_node.errors import DuplicateInstance
from dicom_node.limits import DEFAULT_SOP_CLASS_LIMITS, DataSetLimits, NetworkLimits
from dicom_node.scp import InstanceRecord, StorageSCP
from dicom_node.spool import Spool
from dicom_node.stow import StowClient, StowLimits, StowServer
from dicom_node.tls import server_context

__all__ = ["StoreSink", "node_component", "spool_dir", "stow_component"]

logger = logging.getLogger(__name__)

class StoreSink:
    """Commits instance records into the state store (the node's :class:`InstanceSink`)."""

    def __init__(self, store: StateStore) -> None:
        self.store = store

    def commit(self, records: Sequence[InstanceRecord]) -> None:
        """Insert all records in one transaction; an instance already stored is left as it is."""
        store = self.store
        with store.atomic():
            for rec in records:
                if not store.instances.insert(_instance_row(rec)):
                    _same_place(store, rec)
                    continue  # the same SOP Instance UID again: stored once
                store.studies.touch(rec.study_uid, rec.received_at)
                store.series.touch(rec.series_uid, rec.study_uid, rec.modality, rec.series_description,
                                   rec.received_at)


def _instance_row(rec: InstanceRecord) -> dict[str, Any]:
    return {
        "sop_instance_uid": rec.sop_instance_uid, "sop_class_uid": rec.sop_class_uid, "series_uid": rec.series_uid,
        "study_uid": rec.study_uid, "transfer_syntax": rec.transfer_syntax, "path": str(rec.path), "size": rec.size,
        "calling_ae": rec.calling_ae, "received_at": rec.received_at, "header": rec.header,
        "header_syntax": rec.header_syntax,
    }


def _same_place(store: StateStore, rec: InstanceRecord) -> None:
    """Raise :class:`DuplicateInstance` when the stored instance of this UID is in another study or series."""
    place = store.instances.place(rec.sop_instance_uid)
    if place is not None and place != (rec.study_uid, rec.series_uid):
        raise DuplicateInstance(f"SOP Instance UID of {rec.path.name} is stored already under another study or series")


def spool_dir(config: Config) -> Path:
    """Where received instances are kept: ``<data_dir>/spool``."""
    return config.data_dir / "spool"


def _dataset_limits(config: Config) -> DataSetLimits:
    node = config.node
    return DataSetLimits(
        max_bytes=node.max_dataset_bytes,
        by_sop_class={**DEFAULT_SOP_CLASS_LIMITS, **node.max_dataset_bytes_by_sop_class},
        max_inflated_bytes=node.max_inflated_bytes, max_inflate_ratio=node.max_inflate_ratio,
        max_depth=node.max_sequence_depth,
    )


def stow_component(config: Config, store: StateStore) -> StowServer | None:
    """The STOW-RS listener from ``[dicomweb]`` (None without the section), into the same spool and store.

    Its instances take the node's path: the same spool, ``min_free_bytes`` and
    data-set limits, rows through the same :class:`StoreSink`.
    """
    web = config.dicomweb
    if web is None:
        return None
    tls = (web.tls.cert, web.tls.key, web.tls.ca) if web.tls.enabled else None
    return StowServer(
        host=web.host, port=web.port, spool=Spool(spool_dir(config), config.node.min_free_bytes),
        sink=StoreSink(store), clients=[StowClient(c.name, c.token) for c in web.clients],
        require_token=web.require_token, tls=tls,
        limits=StowLimits(max_request_bytes=web.max_request_bytes, idle_timeout=web.idle_timeout,
                          max_connections=web.max_connections),
        dataset_limits=_dataset_limits(config),
    )


def node_component(config: Config, store: StateStore) -> StorageSCP:
    """The storage SCP configured from ``[node]`` and ``[[peers]]``, committing into ``store``."""
    node = config.node
    tls = node.tls
    context = server_context(tls.cert, tls.key, tls.ca or None) if tls.enabled else None
    policy = AccessPolicy(node.ae_title, [Peer(p.ae_title, p.host) for p in config.peers])
    return StorageSCP(
        ae_title=node.ae_title,
        host=node.host,
        port=node.port,
        spool=Spool(spool_dir(config), node.min_free_bytes),
        sink=StoreSink(store),
        policy=policy,
        ssl_context=context,
        limits=NetworkLimits(
            max_pdu=node.max_pdu, max_associate_rq=node.max_associate_rq, pdu_read_timeout=node.pdu_read_timeout,
            artim_timeout=node.artim_timeout, idle_timeout=node.idle_timeout,
            tls_handshake_timeout=node.tls_handshake_timeout, max_connections=node.max_connections,
            max_connections_per_source=node.max_connections_per_source, backlog=node.listen_backlog,
        ),
        dataset_limits=_dataset_limits(config),
    )

