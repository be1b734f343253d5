"""Peer access control: who may associate with the node (shared/DESIGN.md invariant 3).

A peer is allowed when its calling AE title is listed and, when the listing
names a host, the connection comes from one of that host's addresses. The
called AE title must equal ours. Rejections use the A-ASSOCIATE-RJ reasons of
PS3.8 section 9.3.4 (Table 9-21) and are logged with AE titles and address
only, never patient data.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = ["AccessPolicy", "Peer", "Rejection"]

logger = logging.getLogger(__name__)

#: A-ASSOCIATE-RJ Result "rejected-permanent" (PS3.8 Table 9-21)
RESULT_REJECTED_PERMANENT = 0x01
#: Source "DICOM UL service-user" (PS3.8 Table 9-21)
SOURCE_SERVICE_USER = 0x01


class Rejection(Enum):
    """Why an association is refused, with its PS3.8 Table 9-21 reason/diagnostic code."""

    CALLING_AE_NOT_RECOGNIZED = 0x03
    CALLED_AE_NOT_RECOGNIZED = 0x07

    @property
    def reject_args(self) -> tuple[int, int, int]:
        """(result, source, diagnostic) for ``acse.send_reject``."""
        return RESULT_REJECTED_PERMANENT, SOURCE_SERVICE_USER, self.value


@dataclass(frozen=True)
class Peer:
    """An allowed peer: its AE title and, optionally, the host it must connect from."""

    ae_title: str
    host: str = ""


def _addresses(host: str) -> frozenset[str]:
    """The IP addresses a configured host stands for (a literal address, or a name resolved now)."""
    try:
        return frozenset({str(ipaddress.ip_address(host))})
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        logger.warning("peer host %r does not resolve (%s); it cannot associate", host, exc)
        return frozenset()
    return frozenset(str(ipaddress.ip_address(str(info[4][0]).split("%")[0])) for info in infos)


def _normal_address(address: str) -> str:
    try:
        ip = ipaddress.ip_address(address.split("%")[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


class AccessPolicy:
    """The allow-list of peers and our own AE title.

    Host names are resolved once, when the policy is built (at service start).
    """

    def __init__(self, our_ae_title: str, peers: Iterable[Peer]) -> None:
        self.our_ae_title = our_ae_title.strip()
        self._peers: dict[str, list[frozenset[str] | None]] = {}
        for peer in peers:
            allowed = _addresses(peer.host) if peer.host else None
            self._peers.setdefault(peer.ae_title.strip(), []).append(allowed)

    def check(self, calling_ae: str, called_ae: str, address: str) -> Rejection | None:
        """None when the association may proceed, else the reason it is refused."""
        calling = calling_ae.strip()
        if called_ae.strip() != self.our_ae_title:
            return Rejection.CALLED_AE_NOT_RECOGNIZED
        listings = self._peers.get(calling)
        if not listings:
            return Rejection.CALLING_AE_NOT_RECOGNIZED
        peer_address = _normal_address(address)
        if any(allowed is None or peer_address in allowed for allowed in listings):
            return None
        return Rejection.CALLING_AE_NOT_RECOGNIZED
