"""A real PACS (Orthanc) stores and indexes every report object; re-sending keeps one copy."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest

from appliance.reports import DeviceInfo, build_reports
from tests.peers import STORESCU, Orthanc, peer_env, require_tool
from tests.reports._cases import CASES

pytestmark = pytest.mark.slow  # Orthanc

DEVICE = DeviceInfo.from_serial("SN-TEST-1")


def _send(orthanc: Orthanc, paths: list[Path]) -> None:
    proc = subprocess.run(
        [str(require_tool(STORESCU)), "--required", "-aet", "APPLIANCE", "-aec", orthanc.aet, "127.0.0.1",
         str(orthanc.dicom_port), *map(str, paths)],
        env=peer_env(), capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _build_all(root: Path) -> list[Path]:
    paths = []
    for name, make in CASES.items():
        case_dir = root / name
        case_dir.mkdir(parents=True)
        paths += build_reports(make(case_dir), case_dir / "outbox", DEVICE)
    return paths


def _srs_by_study(paths: list[Path]) -> dict[str, set[str]]:
    expected: dict[str, set[str]] = {}
    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        if ds.Modality == "SR":
            expected.setdefault(ds.StudyInstanceUID, set()).add(ds.SOPInstanceUID)
    return expected


def _found(orthanc: Orthanc, study_uid: str) -> list[str]:
    return [str(f["MainDicomTags"]["SOPInstanceUID"]) for f in orthanc.find_sr(study_uid)]  # type: ignore[index]


def test_orthanc_stores_and_finds_every_report_once(orthanc: Orthanc, tmp_path: Path) -> None:
    first = _build_all(tmp_path / "first")
    _send(orthanc, first)
    assert len(orthanc.instances()) == len(first)
    expected = _srs_by_study(first)
    assert sum(map(len, expected.values())) == len(CASES)
    for study_uid, sr_uids in expected.items():
        assert sorted(_found(orthanc, study_uid)) == sorted(sr_uids)

    again = _build_all(tmp_path / "again")  # the same results rebuilt, e.g. after a crash
    assert [p.name for p in again] == [p.name for p in first]
    _send(orthanc, again)
    assert len(orthanc.instances()) == len(first)
    for study_uid, sr_uids in expected.items():
        assert sorted(_found(orthanc, study_uid)) == sorted(sr_uids)
