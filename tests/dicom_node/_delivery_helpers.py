"""Helpers for the SCU and delivery tests: result-like files and storage SCPs that misbehave."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pydicom
from pynetdicom import AE, evt
from pynetdicom.sop_class import MRImageStorage

from dicom_node.delivery import Outcome
from tests.peers import free_port

#: PS3.4 Table B.2-1: Refused: Out of Resources
OUT_OF_RESOURCES = 0xA700


@contextmanager
def status_scp(status: int, ae_title: str = "REFUSER") -> Iterator[int]:
    """A pynetdicom storage SCP on a free port answering every C-STORE with ``status``."""

    def handle_store(event: evt.Event) -> int:
        return status

    ae = AE(ae_title=ae_title)
    ae.add_supported_context(MRImageStorage, [pydicom.uid.ExplicitVRLittleEndian, pydicom.uid.ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle_store)])
    try:
        yield port
    finally:
        server.shutdown()


@contextmanager
def silent_listener() -> Iterator[int]:
    """A TCP port that accepts connections and never says anything (a hung PACS)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    try:
        yield int(sock.getsockname()[1])
    finally:
        sock.close()


class Recorder:
    """Collects the sender's outcomes; tests wait on it instead of sleeping."""

    def __init__(self) -> None:
        self.outcomes: list[Outcome] = []
        self._cond = threading.Condition()

    def __call__(self, outcome: Outcome) -> None:
        with self._cond:
            self.outcomes.append(outcome)
            self._cond.notify_all()

    def wait_for(self, predicate: Callable[[list[Outcome]], bool], timeout: float) -> list[Outcome]:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.outcomes), timeout):
                raise AssertionError(f"timed out after {timeout} s; outcomes so far: {self.outcomes}")
            return list(self.outcomes)

    def states(self, destination: str) -> list[str]:
        with self._cond:
            return [o.state for o in self.outcomes if o.delivery.destination == destination]


def write_tls_files(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``host`` signed by it: (ca, cert, key) PEM files."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    valid = (now - datetime.timedelta(minutes=5), now + datetime.timedelta(days=1))

    def name(common: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = (
        x509.CertificateBuilder().subject_name(name("test CA")).issuer_name(name("test CA"))
        .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name(host)).issuer_name(ca.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(valid[0]).not_valid_after(valid[1])
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = (directory / "ca.pem", directory / "cert.pem", directory / "key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return paths
