"""TLS contexts for the storage SCP and the delivery SCU (PS3.15 Annex B.1, TLS secure transport).

Both sides use TLS 1.2 or newer. The SCP presents ``cert``/``key``; when a CA
bundle is given it requires a client certificate signed by it (mutual TLS).
The SCU verifies the server against the CA bundle (or the system store when
none is given) and presents its own certificate when it has one.
"""

from __future__ import annotations

import ssl
from pathlib import Path

from dicom_node.errors import NodeError

__all__ = ["TlsError", "client_context", "server_context"]


class TlsError(NodeError):
    """A certificate, key or CA file cannot be loaded."""


def _load_chain(context: ssl.SSLContext, cert: Path | str, key: Path | str) -> None:
    try:
        context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS certificate {str(cert)!r} with key {str(key)!r}: {exc}") from None


def _load_ca(context: ssl.SSLContext, ca: Path | str) -> None:
    try:
        context.load_verify_locations(cafile=str(ca))
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS CA bundle {str(ca)!r}: {exc}") from None


def server_context(cert: Path | str, key: Path | str, ca: Path | str | None = None) -> ssl.SSLContext:
    """Context for the storage SCP; with ``ca`` every peer must present a certificate it signed."""
    if not cert or not key:
        raise TlsError("the TLS server needs both a certificate and a key")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_chain(context, cert, key)
    if ca:
        _load_ca(context, ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_context(
    ca: Path | str | None = None,
    cert: Path | str | None = None,
    key: Path | str | None = None,
    check_hostname: bool = True,
) -> ssl.SSLContext:
    """Context for an SCU: verifies the server (against ``ca`` when given), presents cert/key if given.

    ``check_hostname=False`` still verifies the certificate chain but not the name,
    for destinations configured by IP address whose certificate names a host.
    """
    try:
        # with a CA bundle only that bundle is trusted; without one, the system store
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as exc:
        raise TlsError(f"cannot load TLS CA bundle {str(ca)!r}: {exc}") from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if cert or key:
        if not (cert and key):
            raise TlsError("a TLS client certificate needs both 'cert' and 'key'")
        _load_chain(context, cert, key)
    context.check_hostname = check_hostname
    return context
