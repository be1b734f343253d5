"""The storage SCP's limits: connections, PDUs, timeouts and data-set sizes (set from ``[node]``).

Every value bounds what a peer, listed or not, can make the node hold or wait
for; docs/conformance.md lists them with their configuration keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from pydicom.uid import VLWholeSlideMicroscopyImageStorage

__all__ = ["DEFAULT_SOP_CLASS_LIMITS", "DataSetLimits", "NetworkLimits", "VL_WHOLE_SLIDE_MICROSCOPY"]

VL_WHOLE_SLIDE_MICROSCOPY: str = VLWholeSlideMicroscopyImageStorage
#: per-SOP-class data-set limits by default: a whole-slide instance may reach 4 GB
DEFAULT_SOP_CLASS_LIMITS: Mapping[str, int] = {VL_WHOLE_SLIDE_MICROSCOPY: 4 << 30}


@dataclass(frozen=True)
class NetworkLimits:
    """Limits and timeouts of the storage SCP's connections (the ``[node]`` keys of the same names)."""

    max_pdu: int = 262_144  #: the maximum PDU length we announce and enforce (PS3.8 D.1)
    max_associate_rq: int = 65_536  #: longest A-ASSOCIATE-RQ (or other non-P-DATA PDU) read, before AE titles
    pdu_read_timeout: float = 30.0  #: seconds for a PDU to arrive whole once it has started
    artim_timeout: float = 30.0  #: seconds for the first PDU and for release/abort replies (ARTIM, PS3.8 9.1.5)
    idle_timeout: float = 60.0  #: seconds an association may stay silent between messages
    tls_handshake_timeout: float = 10.0  #: seconds for a TLS handshake
    max_connections: int = 64  #: open connections in total
    max_connections_per_source: int = 16  #: open connections from one address
    backlog: int = 128  #: listen backlog


@dataclass(frozen=True)
class DataSetLimits:
    """How large a received data set may be, per SOP class, and how far a deflated one may inflate."""

    max_bytes: int = 1 << 30  #: data-set bytes for a SOP class not in ``by_sop_class``
    by_sop_class: Mapping[str, int] = field(default_factory=lambda: dict(DEFAULT_SOP_CLASS_LIMITS))
    max_inflated_bytes: int = 1 << 30  #: inflated bytes of a Deflated Explicit VR Little Endian data set
    max_inflate_ratio: float = 100.0  #: inflated / received bytes (checked past 16 MiB inflated)
    max_depth: int = 32  #: nesting of sequences

    def for_sop_class(self, sop_class_uid: str) -> int:
        """The data-set limit for ``sop_class_uid``."""
        return int(self.by_sop_class.get(sop_class_uid, self.max_bytes))
