"""The storage SCU against real peers: dcmtk storescp, Orthanc, pynetdicom SCPs."""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.filereader import read_dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import ALL_TRANSFER_SYNTAXES, AE, _config, evt
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import split_dataset
from pynetdicom.sop_class import MRImageStorage

from dicom_node._c_store import encode_c_store_rq, read_info
from dicom_node.errors import DeliveryFailed
from dicom_node.scu import Destination, StorageSCU, UnsendableFile, describe_status
from dicom_node.tls import client_context, server_context
from tests.dicom_node._delivery_helpers import OUT_OF_RESOURCES, status_scp, write_tls_files
from tests.peers import Orthanc, free_port, running_storescp, write_mr_instances

#: one pydicom test MR per transfer syntax the SCU must send as stored
TEST_FILES = [
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_bigendian.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
]


def _data_set_bytes(path: Path) -> bytes:
    _, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def test_command_set_matches_pynetdicoms_encoding() -> None:
    req = C_STORE()
    req.MessageID = 7
    req.Priority = 0
    req.AffectedSOPClassUID = MRImageStorage
    req.AffectedSOPInstanceUID = "1.2.3.45"
    req.DataSet = BytesIO(b"\x08\x00\x18\x00")
    msg = C_STORE_RQ()
    msg.primitive_to_message(req)
    theirs = msg.command_set
    ours = read_dataset(BytesIO(encode_c_store_rq(7, MRImageStorage, "1.2.3.45")), True, True)
    assert {e.tag: e.value for e in ours} == {e.tag: e.value for e in theirs}


@pytest.mark.parametrize("name", [*TEST_FILES, "MR_small_padded.dcm", "CT_small.dcm", "SC_rgb_rle.dcm", "JPEG2000.dcm"])
def test_file_meta_scan_agrees_with_pydicom(name: str) -> None:
    path = Path(get_testdata_file(name))
    meta, offset = split_dataset(path)
    info = read_info(path)
    assert info.offset == offset
    assert (info.sop_class_uid, info.sop_instance_uid, info.transfer_syntax) == (
        meta.MediaStorageSOPClassUID,
        meta.MediaStorageSOPInstanceUID,
        meta.TransferSyntaxUID,
    )


@pytest.mark.parametrize(
    ("code", "text"),
    [
        (0x0000, "0x0000 Success: Success"),
        (0xA700, "0xA700 Failure: Refused: Out of Resources"),
        (0xC123, "0xC123 Failure: Cannot Understand"),
        (0xB000, "0xB000 Warning: Coercion of Data Elements"),
    ],
)
def test_describe_status(code: int, text: str) -> None:
    assert describe_status(code) == text


@pytest.mark.parametrize("name", TEST_FILES)
def test_files_arrive_in_storescp_in_their_own_syntax(tmp_path: Path, name: str) -> None:
    source = Path(get_testdata_file(name))
    with running_storescp(tmp_path / "out") as port:
        results = StorageSCU("APPLIANCE", timeout=10).send_files(
            Destination("scp", "STORESCP", "127.0.0.1", port), [source]
        )
    assert [r.error for r in results] == [None]
    received = list((tmp_path / "out").iterdir())
    assert len(received) == 1
    got, sent = pydicom.dcmread(received[0]), pydicom.dcmread(source)
    assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID
    assert got.SOPInstanceUID == sent.SOPInstanceUID
    assert got.PixelData == sent.PixelData  # storescp re-writes the file; the wire bytes are checked below


@contextmanager
def _raw_scp(
    received: list[bytes], max_pdu: int = 16382, lengths: list[int] | None = None, tls: ssl.SSLContext | None = None
) -> Iterator[int]:
    """A pynetdicom SCP that keeps the data set bytes exactly as they came off the wire."""

    def handle(event: evt.Event) -> int:
        if _config.STORE_RECV_CHUNKED_DATASET:  # the node's speed-ups are off: pynetdicom's chunked receive
            received.append(_data_set_bytes(Path(event.dataset_path)))
        else:
            received.append(event.request.DataSet.getvalue())
        return 0

    def pdu(event: evt.Event) -> None:
        if lengths is not None and type(event.pdu).__name__ == "P_DATA_TF":
            lengths.append(event.pdu.pdu_length)

    ae = AE(ae_title="RAW")
    ae.maximum_pdu_size = max_pdu
    ae.add_supported_context(MRImageStorage, ALL_TRANSFER_SYNTAXES)
    port = free_port()
    handlers = [(evt.EVT_C_STORE, handle), (evt.EVT_PDU_RECV, pdu)]
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=handlers, ssl_context=tls)
    try:
        yield port
    finally:
        server.shutdown()


@pytest.mark.parametrize("max_pdu", [0, 16382, 1024])
def test_data_sets_go_on_the_wire_as_stored(max_pdu: int) -> None:
    """Byte for byte, in one PDU or in fragments that fit the peer's maximum PDU (0: unlimited)."""
    sources = [Path(get_testdata_file(name)) for name in TEST_FILES]
    received: list[bytes] = []
    lengths: list[int] = []
    with _raw_scp(received, max_pdu, lengths) as port:
        results = StorageSCU(timeout=10).send_files(Destination("raw", "RAW", "127.0.0.1", port), sources)
    assert [r.error for r in results] == [None] * len(sources)
    assert received == [_data_set_bytes(p) for p in sources]
    if max_pdu:
        assert max(lengths) <= max_pdu
    expected_pdus = len(sources) if max_pdu != 1024 else sum(len(d) // 1000 for d in received)
    assert len(lengths) >= expected_pdus


def test_one_association_carries_a_batch(tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "in", 20, study_each=True)
    associations: list[object] = []
    with running_storescp(tmp_path / "out") as port:
        scu = StorageSCU("APPLIANCE", timeout=10)
        dest = Destination("scp", "STORESCP", "127.0.0.1", port)
        with scu.session(dest, paths) as session:
            associations.append(session)
            statuses = [session.store(p) for p in paths]
    assert statuses == [0] * 20 and len(associations) == 1
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == sorted(f"MR.{p.stem}" for p in paths)


@contextmanager
def _implicit_only_scp(received: list[pydicom.Dataset]) -> Iterator[int]:
    def handle(event: evt.Event) -> int:
        received.append(event.dataset)
        return 0

    ae = AE(ae_title="IMPLICIT")
    ae.add_supported_context(MRImageStorage, [ImplicitVRLittleEndian])
    port = free_port()
    server = ae.start_server(("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, handle)])
    try:
        yield port
    finally:
        server.shutdown()


def test_uncompressed_file_is_converted_when_the_peer_wants_another_syntax(tmp_path: Path) -> None:
    path = write_mr_instances(tmp_path / "in", 1, study_each=True)[0]
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    received: list[pydicom.Dataset] = []
    with _implicit_only_scp(received) as port:
        results = StorageSCU(timeout=10).send_files(Destination("scp", "IMPLICIT", "127.0.0.1", port), [path])
    assert results[0].ok
    assert [str(ds.SOPInstanceUID) for ds in received] == [path.stem]
    assert received[0].PixelData == pydicom.dcmread(path).PixelData


def test_compressed_file_fails_when_its_syntax_is_not_accepted(tmp_path: Path) -> None:
    with status_scp(0x0000) as port:
        results = StorageSCU(timeout=10).send_files(
            Destination("scp", "REFUSER", "127.0.0.1", port), [Path(get_testdata_file("MR_small_RLE.dcm"))]
        )
    assert results[0].error is not None
    with pytest.raises(DeliveryFailed, match=r"accepted none of the proposed presentation contexts \(MR Image Storage in RLE Lossless\)"):
        raise results[0].error


def test_failure_status_is_reported_with_hex_and_meaning(tmp_path: Path) -> None:
    paths = write_mr_instances(tmp_path / "in", 2, study_each=True)
    with status_scp(OUT_OF_RESOURCES) as port:
        results = StorageSCU(timeout=10).send_files(Destination("r", "REFUSER", "127.0.0.1", port), paths)
    assert len(results) == 2
    for result in results:
        with pytest.raises(DeliveryFailed, match=r"answered C-STORE with 0xA700 Failure: Refused: Out of Resources"):
            raise result.error or AssertionError("no error")


def test_rejected_association_names_the_reason(orthanc: Orthanc, tmp_path: Path) -> None:
    path = write_mr_instances(tmp_path / "in", 1, study_each=True)[0]
    wrong = Destination("pacs", "NOT-ORTHANC", "127.0.0.1", orthanc.dicom_port)
    results = StorageSCU(timeout=10).send_files(wrong, [path])
    with pytest.raises(DeliveryFailed, match=r"association rejected by pacs \(NOT-ORTHANC@.*reason: "):
        raise results[0].error or AssertionError("no error")
    with pytest.raises(DeliveryFailed, match="association rejected"):
        StorageSCU(timeout=10).echo(wrong)
    assert StorageSCU(timeout=10).echo(Destination("pacs", orthanc.aet, "127.0.0.1", orthanc.dicom_port)) < 10


def test_refused_connection_and_unreadable_files(tmp_path: Path) -> None:
    nobody = Destination("nobody", "NOBODY", "127.0.0.1", free_port())
    with pytest.raises(DeliveryFailed, match=r"cannot connect to nobody \(NOBODY@127.0.0.1:\d+\): connection refused"):
        StorageSCU(timeout=5).echo(nobody)
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom at all" * 20)
    results = StorageSCU(timeout=5).send_files(nobody, [tmp_path / "missing.dcm", junk])
    assert [type(r.error) for r in results] == [UnsendableFile, UnsendableFile]
    assert "does not exist" in str(results[0].error)


def test_tls_delivery_sends_as_stored_and_checks_the_server(tmp_path: Path) -> None:
    ca, cert, key = write_tls_files(tmp_path / "tls")
    sources = [Path(get_testdata_file(name)) for name in TEST_FILES[:3]]
    received: list[bytes] = []
    with _raw_scp(received, tls=server_context(cert, key)) as port:
        trusted = Destination("raw", "RAW", "127.0.0.1", port, ssl_context=client_context(ca=ca))
        results = StorageSCU(timeout=10).send_files(trusted, sources)
        assert [r.error for r in results] == [None] * len(sources)
        untrusting = Destination("raw", "RAW", "127.0.0.1", port, ssl_context=client_context(ca=tmp_path / "tls" / "cert.pem"))
        with pytest.raises(DeliveryFailed, match="cannot connect to raw .* TLS handshake failed"):
            StorageSCU(timeout=10).echo(untrusting)
    assert received == [_data_set_bytes(p) for p in sources]


def test_large_file_is_sent_in_fragments_never_read_whole(tmp_path: Path) -> None:
    """A 96 MiB file goes out as stored while the sender's Python allocations stay a few MiB."""
    import tracemalloc

    from tests.dicom_node._large import data_set_digest, write_large_instance

    source = write_large_instance(tmp_path / "large.dcm", 96 << 20)
    with running_storescp(tmp_path / "out") as port:
        tracemalloc.start()
        try:
            results = StorageSCU("APPLIANCE", timeout=60).send_files(
                Destination("scp", "STORESCP", "127.0.0.1", port), [source]
            )
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    assert results[0].ok, results[0].error
    assert peak < 24 << 20, f"the sender allocated {peak >> 20} MiB at its peak"
    (received,) = (tmp_path / "out").iterdir()
    assert data_set_digest(received) == data_set_digest(source)


def test_conversion_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a small file is decoded for conversion; a larger one fails with the reason instead."""
    from dicom_node import scu as scu_module

    monkeypatch.setattr(scu_module, "CONVERT_LIMIT", 1024)
    path = write_mr_instances(tmp_path / "in", 1, study_each=True)[0]
    received: list[pydicom.Dataset] = []
    with _implicit_only_scp(received) as port:
        results = StorageSCU(timeout=10).send_files(Destination("scp", "IMPLICIT", "127.0.0.1", port), [path])
    assert not received and results[0].error is not None
    with pytest.raises(DeliveryFailed, match=r"converting a file of \d+ bytes would hold it in memory \(limit 1024\)"):
        raise results[0].error
