"""The storage SCP against real dcmtk peers: storage as received, access control, failures."""

from __future__ import annotations

import copy
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from dicom_node.access import Peer
from dicom_node.scp import StoreStatus
from tests.dicom_node._node import (
    OUR_AE,
    acknowledged_files,
    as_sent_by_storescu,
    dataset_bytes,
    running_node,
    storescu,
    pydicom_file,
    write_mr_series,
)
from tests.peers import ECHOSCU, STORESCU, peer_env

#: every pydicom MR_small file stored as received, plus one file per remaining transfer syntax
AS_RECEIVED = [
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "MR_small_padded.dcm",
    "MR_small_RLE.dcm",
    "MR_small_jp2klossless.dcm",
    "MR_small_jpeg_ls_lossless.dcm",
    "image_dfl.dcm",  # Deflated Explicit VR Little Endian
    "SC_rgb_jpeg_dcmtk.dcm",  # JPEG Baseline
    "JPGExtended.dcm",  # JPEG Extended
    "SC_rgb_jpeg_gdcm.dcm",  # JPEG Lossless SV1
    "JPEG2000.dcm",  # JPEG 2000 (lossy allowed)
    "JPEGLSNearLossless_08.dcm",  # JPEG-LS near-lossless
    "693_J2KI.dcm",  # CT
]
#: storescu's option proposing each transfer syntax (so it sends the file as it is, without recoding)
PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}
#: Big Endian files: storescu converts them to the little endian syntax we prefer
BIG_ENDIAN = ["MR_small_bigendian.dcm", "MR_small_expb.dcm"]


def _with_uids(name: str, tmp_path: Path) -> Path:
    """The test file, given Study/Series UIDs when it has none (pixel data untouched)."""
    source = pydicom_file(name)
    ds = pydicom.dcmread(source)
    if "StudyInstanceUID" in ds and "SeriesInstanceUID" in ds:
        return source
    ds.StudyInstanceUID = ds.get("StudyInstanceUID", generate_uid())
    ds.SeriesInstanceUID = ds.get("SeriesInstanceUID", generate_uid())
    out = tmp_path / name
    ds.save_as(out, enforce_file_format=True)
    return out


def _spool_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def test_echo(data_dir: Path) -> None:
    with running_node(data_dir) as node:
        proc = subprocess.run(
            [str(ECHOSCU), "-aet", "STORESCU", "-aec", OUR_AE, "127.0.0.1", str(node.port)],
            env=peer_env(), capture_output=True, text=True, timeout=60,
        )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("name", AS_RECEIVED)
def test_stored_as_received(name: str, data_dir: Path, tmp_path: Path) -> None:
    path = _with_uids(name, tmp_path)
    original = pydicom.dcmread(path, stop_before_pixels=True)
    propose = PROPOSE[original.file_meta.TransferSyntaxUID]  # the file's own syntax
    with running_node(data_dir) as node:
        proc = storescu(node.port, [path], "STORESCU", OUR_AE, "-R", propose)
        assert proc.returncode == 0, proc.stderr
        assert acknowledged_files(proc.stderr + proc.stdout) == [str(path)]
        counts = node.store.counts()
        (row,) = node.store.query("select * from instances")
    assert counts["instances"] == 1 and counts["studies"] == 1
    assert row["transfer_syntax"] == original.file_meta.TransferSyntaxUID
    stored = Path(row["path"])
    assert stored.name == f"{original.SOPInstanceUID}.dcm"
    assert dataset_bytes(stored) == as_sent_by_storescu(path, tmp_path, propose), f"{name} not stored byte-identical"
    assert pydicom.dcmread(stored).file_meta.MediaStorageSOPInstanceUID == original.SOPInstanceUID


@pytest.mark.parametrize("name", BIG_ENDIAN)
def test_big_endian_arrives_converted_by_the_sender_with_equal_pixels(name: str, data_dir: Path) -> None:
    with running_node(data_dir) as node:
        proc = storescu(node.port, [pydicom_file(name)])
        assert proc.returncode == 0, proc.stderr
        (row,) = node.store.query("select * from instances")
    stored = pydicom.dcmread(row["path"])
    assert stored.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(stored.pixel_array, pydicom.dcmread(pydicom_file(name)).pixel_array)


def test_same_instance_twice_is_stored_once(data_dir: Path) -> None:
    source = pydicom_file("MR_small.dcm")
    with running_node(data_dir) as node:
        for _ in range(2):
            proc = storescu(node.port, [source])
            assert proc.returncode == 0 and "Success" in proc.stderr + proc.stdout
        counts = node.store.counts()
        (series,) = node.store.query("select * from series")
        files = _spool_files(node.spool.root)
    assert counts["instances"] == 1 and counts["studies"] == 1
    assert series["instance_count"] == 1 and series["state"] == "open"
    assert len(files) == 1


@pytest.mark.parametrize(
    ("calling", "called", "peers"),
    [
        ("INTRUDER", OUR_AE, (Peer("STORESCU", "127.0.0.1"),)),  # unknown calling AE
        ("STORESCU", "SOMEONEELSE", (Peer("STORESCU", "127.0.0.1"),)),  # wrong called AE
        ("STORESCU", OUR_AE, (Peer("STORESCU", "192.0.2.10"),)),  # listed peer, other host
    ],
    ids=["unknown-calling-ae", "wrong-called-ae", "disallowed-host"],
)
def test_association_rejected(calling: str, called: str, peers: tuple[Peer, ...], data_dir: Path) -> None:
    with running_node(data_dir, peers=peers) as node:
        proc = storescu(node.port, [pydicom_file("MR_small.dcm")], calling, called)
        assert proc.returncode != 0
        assert "Association Rejected" in proc.stderr + proc.stdout
        assert node.instance_count() == 0
        assert _spool_files(node.spool.root) == []


def _bad_uid_files(tmp_path: Path) -> dict[str, Path]:
    source = pydicom.dcmread(pydicom_file("MR_small.dcm"))
    files = {}
    for label, keyword, value in [
        ("missing-series", "SeriesInstanceUID", None),
        ("missing-study", "StudyInstanceUID", None),
        ("malformed-study", "StudyInstanceUID", "1.2.840.abc"),
        ("path-in-series", "SeriesInstanceUID", "../../etc"),
        ("too-long-series", "SeriesInstanceUID", "1." + "2" * 70),
    ]:
        ds = copy.deepcopy(source)
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        if value is None:
            delattr(ds, keyword)
        else:
            ds[keyword].value = value
        path = tmp_path / f"{label}.dcm"
        with pydicom.config.disable_value_validation():
            ds.save_as(path, enforce_file_format=True)
        files[label] = path
    return files


def test_bad_datasets_fail_and_the_node_keeps_accepting(data_dir: Path, tmp_path: Path) -> None:
    bad = _bad_uid_files(tmp_path)
    with running_node(data_dir) as node:
        for label, path in bad.items():
            proc = storescu(node.port, [path])
            output = proc.stderr + proc.stdout
            assert "Received Store Response (Success)" not in output, label
            assert "Received Store Response (Error: CannotUnderstand)" in output, output  # 0xC001
        truncated = storescu(node.port, [pydicom_file("MR_truncated.dcm")])
        assert "Received Store Response (Success)" not in truncated.stderr + truncated.stdout
        assert node.instance_count() == 0
        assert _spool_files(node.spool.root) == []
        good = storescu(node.port, [pydicom_file("MR_small.dcm")])
        assert good.returncode == 0 and node.instance_count() == 1


def test_truncated_data_set_answered_cannot_understand(data_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """MR_truncated.dcm on the wire as it is on disk (storescu will not send it; pynetdicom's chunked send does)."""
    from pynetdicom import AE, _config
    from pynetdicom.sop_class import MRImageStorage

    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)
    with running_node(data_dir) as node:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(MRImageStorage, ExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", node.port, ae_title=OUR_AE)
        assert assoc.is_established
        try:
            status = assoc.send_c_store(pydicom_file("MR_truncated.dcm"))
            assert status.Status == StoreStatus.CANNOT_UNDERSTAND
            good = assoc.send_c_store(pydicom_file("MR_small.dcm"))
            assert good.Status == StoreStatus.SUCCESS
        finally:
            assoc.release()
        assert node.instance_count() == 1 and len(_spool_files(node.spool.root)) == 1


def test_low_free_space_answers_out_of_resources(data_dir: Path, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "mr", 3)
    with running_node(data_dir, min_free_bytes=2**62) as node:
        proc = storescu(node.port, files)
        output = (proc.stderr + proc.stdout).lower()
        assert "received store response (success)" not in output
        assert "refused: outofresources" in output, output  # 0xA700
        assert node.instance_count() == 0
        assert _spool_files(node.spool.root) == []


def test_parallel_associations_share_group_commits(data_dir: Path, tmp_path: Path) -> None:
    files = write_mr_series(tmp_path / "mr", 60)
    with running_node(data_dir) as node:
        procs = [
            subprocess.Popen(
                [str(STORESCU), "-aet", "STORESCU", "-aec", OUR_AE, "127.0.0.1", str(node.port), *map(str, files[i::6])],
                env=peer_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            for i in range(6)
        ]
        assert [proc.wait(timeout=120) for proc in procs] == [0] * 6
        (series,) = node.store.query("select instance_count from series")
        assert node.instance_count() == 60 and series["instance_count"] == 60
        assert len(_spool_files(node.spool.root)) == 60
