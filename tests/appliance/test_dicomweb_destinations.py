"""``kind = "dicomweb"`` destinations: configuration checks, and ``appliance echo`` by QIDO-RS."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from typer.testing import CliRunner

from appliance.cli import app
from appliance.config import parse_config
from appliance.errors import ConfigError
from appliance.outbox import web_destination_from
from tests.peers import Orthanc, free_port, running_orthanc

USER, PASSWORD = "appliance", "echo-pw"


@pytest.mark.parametrize(
    ("destination", "message"),
    [
        ({"kind": "dicomweb"}, r"destination 'a' of kind 'dicomweb' needs 'url'"),
        ({"kind": "dicomweb", "url": "http://h/dw", "ae_title": "X"}, r"of kind 'dicomweb' does not take ae_title"),
        ({"kind": "dicomweb", "url": "http://h/dw", "port": 104, "tls": True}, r"does not take port, tls"),
        ({"ae_title": "X", "url": "http://h/dw"}, r"'a' of kind 'dimse' does not take url"),
        ({"ae_title": "X", "token": "t"}, r"of kind 'dimse' does not take token"),
        ({"port": 104}, r"'a' of kind 'dimse' needs 'ae_title'"),
        ({"kind": "wado", "ae_title": "X"}, r"destinations\.0\.kind: .*'dimse' or 'dicomweb' \(got 'wado'\)"),
        ({"kind": "dicomweb", "url": "ftp://h/dw"}, r"DICOMweb url 'ftp://h/dw' must be http\(s\)://host"),
        ({"kind": "dicomweb", "url": "archive.example/dw"}, r"DICOMweb url 'archive.example/dw' must be"),
        ({"kind": "dicomweb", "url": "https://u:p@h/dw"}, r"of host 'h' must carry no user, password"),
        ({"kind": "dicomweb", "url": "https://h:99999/dw"}, r"url 'https://h:99999/dw' has an invalid port"),
        ({"kind": "dicomweb", "url": "http://h/dw", "token": "t", "basic": "u:p"}, r"give token or basic, not both"),
        ({"kind": "dicomweb", "url": "http://h/dw", "basic": "nocolon"}, r"basic must be 'user:password'"),
        ({"kind": "dicomweb", "url": "http://h/dw", "token": "a b\n"}, r"token must be printable"),
        ({"kind": "dicomweb", "url": "https://h/dw", "ca": "/nonexistent.pem"}, r"ca file '/nonexistent.pem' does not"),
        ({"kind": "dicomweb", "url": "https://h/dw", "key": __file__}, r"key '.*' needs cert"),
        ({"kind": "dicomweb", "url": "http://h/dw", "ca": __file__}, r"cert and ca need an https url, got 'http://h/dw'"),
    ],
)
def test_bad_dicomweb_destinations_are_named(destination: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config({"destinations": [{"name": "a", **destination}]})


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"x": 1}, "Extra inputs are not permitted"), ({"ae_title": "Y"}, "does not take ae_title"), ({}, "not both")],
)
def test_secrets_never_appear_in_a_configuration_error(extra: dict[str, object], message: str) -> None:
    bad = {"name": "a", "kind": "dicomweb", "url": "http://h/dw", "token": "TOKEN-123", "basic": "u:PASS-456", **extra}
    with pytest.raises(ConfigError, match=message) as info:
        parse_config({"destinations": [bad]})
    assert "TOKEN-123" not in str(info.value) and "PASS-456" not in str(info.value)
    assert "'token': '<redacted>'" in str(info.value) or "destinations.0.x" in str(info.value)


def test_a_dicomweb_destination_and_its_credentials() -> None:
    config = parse_config({"destinations": [
        {"name": "cloud", "kind": "dicomweb", "url": "https://archive.example/dicom-web/", "token": "SECRET-TOK"},
        {"name": "local", "kind": "dicomweb", "url": "http://127.0.0.1:8042/dicom-web", "basic": "u:p:with:colons"},
        {"name": "pacs", "ae_title": "PACS", "port": 4242},
    ]})
    cloud = web_destination_from(config.destination("cloud"))
    assert cloud.url == "https://archive.example/dicom-web" and cloud.token == "SECRET-TOK" and cloud.basic is None
    assert web_destination_from(config.destination("local")).basic == ("u", "p:with:colons")
    assert config.destination("pacs").kind == "dimse" and config.destination("pacs").url == ""
    assert "SECRET-TOK" not in repr(config) and "SECRET-TOK" not in repr(cloud) and "with:colons" not in repr(config)


def _echo(tmp_path: Path, destination: dict[str, object]) -> tuple[int, str]:
    config = tmp_path / "appliance.toml"
    lines = [f"{key} = {json.dumps(value)}" for key, value in {"name": "web", "kind": "dicomweb", **destination}.items()]
    config.write_text("[delivery]\ntimeout_seconds = 10\n[[destinations]]\n" + "\n".join(lines) + "\n")
    result = CliRunner().invoke(app, ["echo", "web", "--config", str(config)])
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def web_pacs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    with running_orthanc(tmp_path_factory.mktemp("orthanc-echo"), dicomweb=True, users={USER: PASSWORD}) as orthanc:
        yield orthanc


def test_echo_queries_a_dicomweb_archive_with_qido_rs(web_pacs: Orthanc, tmp_path: Path) -> None:
    code, output = _echo(tmp_path, {"url": web_pacs.dicomweb_url, "basic": f"{USER}:{PASSWORD}"})
    assert code == 0, output
    assert f"echo web: success ({web_pacs.dicomweb_url}," in output


def test_echo_says_why_a_dicomweb_archive_does_not_answer(web_pacs: Orthanc, tmp_path: Path) -> None:
    code, output = _echo(tmp_path, {"url": web_pacs.dicomweb_url, "basic": f"{USER}:wrong-pw"})
    assert code == 1 and "echo web: failed: " in output and "answered the QIDO-RS query with HTTP 401" in output
    assert "wrong-pw" not in output
    code, output = _echo(tmp_path, {"url": f"http://127.0.0.1:{free_port()}/dicom-web"})
    assert code == 1 and "cannot reach web" in output and "connection refused" in output


class _TokenService(BaseHTTPRequestHandler):
    """Answers QIDO-RS only with the bearer token the test configured (Orthanc 1.10 has no bearer tokens)."""

    token = ""
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.seen.append(f"{self.path} {self.headers.get('Authorization', '')}")
        ok = self.headers.get("Authorization") == f"Bearer {self.token}"
        body = b"[]" if ok else b""
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - silence the test server
        return


def test_echo_sends_the_bearer_token(tmp_path: Path) -> None:
    _TokenService.token, _TokenService.seen = "T0KEN", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenService)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
        assert _echo(tmp_path, {"url": url, "token": "T0KEN"})[0] == 0
        code, output = _echo(tmp_path, {"url": url, "token": "other"})
        assert code == 1 and "HTTP 401" in output and "other" not in output.replace("another", "")
    finally:
        server.shutdown()
        server.server_close()
    assert _TokenService.seen[0] == "/dicom-web/studies?limit=1 Bearer T0KEN"


def test_echo_over_https_with_the_ca_and_a_client_certificate(tmp_path: Path) -> None:
    """A TLS server that requires a client certificate signed by the test CA (Python's ssl as the peer)."""
    import ssl

    from tests.dicom_node._delivery_helpers import write_tls_files

    ca, cert, key = write_tls_files(tmp_path / "tls")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    context.load_verify_locations(ca)
    context.verify_mode = ssl.CERT_REQUIRED
    _TokenService.token, _TokenService.seen = "T", []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _TokenService)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
        code, output = _echo(tmp_path, {"url": url, "token": "T", "ca": str(ca), "cert": str(cert), "key": str(key)})
        assert code == 0, output
        code, output = _echo(tmp_path, {"url": url, "token": "T", "cert": str(cert), "key": str(key)})
        assert code == 1 and "TLS handshake failed (certificate not trusted?)" in output
        code, output = _echo(tmp_path, {"url": url, "token": "T", "ca": str(ca)})  # no client certificate
        assert code == 1 and "cannot reach web" in output
    finally:
        server.shutdown()
        server.server_close()
    assert _TokenService.seen == ["/dicom-web/studies?limit=1 Bearer T"]
