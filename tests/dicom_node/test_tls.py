"""TLS for the storage SCP and an SCU, with a CA, a server and a client certificate made here."""

from __future__ import annotations

import datetime
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from pynetdicom import AE

from appliance.ingest import StoreSink
from appliance.state import StateStore
from dicom_node.access import AccessPolicy, Peer
from dicom_node.scp import StorageSCP
from dicom_node.spool import Spool
from dicom_node.tls import TlsError, client_context, server_context
from tests.peers import free_port, wait_for_port


def _issue(name: str, issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None, out: Path) -> tuple[x509.Name, ec.EllipticCurvePrivateKey]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    issuer_name, issuer_key = issuer if issuer else (subject, key)
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=issuer is None, path_length=None), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
    cert = builder.sign(issuer_key, hashes.SHA256())
    (out / f"{name}.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (out / f"{name}.key").write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return subject, key


@pytest.fixture
def pki(tmp_path: Path) -> Path:
    ca = _issue("ca", None, tmp_path)
    _issue("server", ca, tmp_path)
    _issue("client", ca, tmp_path)
    _issue("stranger", _issue("otherca", None, tmp_path), tmp_path)
    return tmp_path


def _echo(port: int, context: ssl.SSLContext) -> bool:
    ae = AE(ae_title="SCANNER1")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title="APPLIANCE", tls_args=(context, "localhost"))
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


@pytest.mark.parametrize(("client", "accepted"), [("client", True), ("stranger", False)])
def test_mutual_tls_echo(pki: Path, data_dir: Path, client: str, accepted: bool) -> None:
    store = StateStore.for_data_dir(data_dir)
    scp = StorageSCP(
        "APPLIANCE", "127.0.0.1", free_port(), Spool(data_dir / "spool"), StoreSink(store),
        AccessPolicy("APPLIANCE", [Peer("SCANNER1", "127.0.0.1")]),
        ssl_context=server_context(pki / "server.crt", pki / "server.key", pki / "ca.crt"),
    )
    scp.start()
    try:
        wait_for_port(scp.port)
        context = client_context(pki / "ca.crt", pki / f"{client}.crt", pki / f"{client}.key")
        assert _echo(scp.port, context) is accepted
    finally:
        scp.stop()
        store.close()


def test_missing_certificate_is_named(tmp_path: Path) -> None:
    with pytest.raises(TlsError, match="nowhere.crt"):
        server_context(tmp_path / "nowhere.crt", tmp_path / "nowhere.key")
