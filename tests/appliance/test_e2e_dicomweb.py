"""End to end (issue 19): DICOMweb in and out, Orthanc on both sides.

Orthanc (its DICOMweb plugin, HTTP basic authentication) holds a DCE-MRI study
and a WSI study and pushes each to ``appliance serve`` by STOW-RS (its
``DicomWeb.Servers`` entry with the appliance's bearer token); the appliance
stores them byte-identical, routes and scores them, and its only destination is
the same Orthanc's DICOMweb service. Each SR is found with Orthanc's QIDO-RS in
its study, read back byte-identical to the outbox file, and judged by dciodvfy.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from appliance.demo._scanner import write_dce_study, write_slide_study
from tests.appliance import _e2e
from tests.appliance.test_e2e import appliance_dir, engine_cache, serves  # noqa: F401 - fixtures
from tests.peers import Orthanc, dciodvfy, free_port, running_orthanc

USER, PASSWORD = "appliance", "e2e-pw"
TOKEN = "e2e-orthanc-bearer-token-0123456789"  # the appliance's [[dicomweb.clients]] entry for Orthanc
ROUTES = (
    '[[routes]]\npipeline = "pathology"\nmatch = { Modality = "SM" }\nstable_seconds = 1\n',
    '[[routes]]\npipeline = "breast_mri"\nmatch = { Modality = "MR" }\nstable_seconds = 1\n',
)


def _write_config(path: Path, data_dir: Path, dicomweb_url: str, node_port: int, stow_port: int) -> None:
    path.write_text(
        f'[node]\nae_title = "{_e2e.NODE_AE}"\nhost = "127.0.0.1"\nport = {node_port}\n'
        f'data_dir = "{data_dir}"\nmin_free_bytes = 50000000\n\n'
        f'[[peers]]\nae_title = "{_e2e.SCANNER_AE}"\nhost = "127.0.0.1"\n\n'
        f'[dicomweb]\nhost = "127.0.0.1"\nport = {stow_port}\n\n'
        f'[[dicomweb.clients]]\nname = "orthanc"\ntoken = "{TOKEN}"\n\n'
        f'[[destinations]]\nname = "archive"\nkind = "dicomweb"\nurl = "{dicomweb_url}"\nbasic = "{USER}:{PASSWORD}"\n\n'
        '[delivery]\ninitial_backoff_seconds = 0.5\nmax_backoff_seconds = 2.0\n\n'
        '[web]\nhost = "127.0.0.1"\nport = 0\n\n' + "\n".join(ROUTES),
        encoding="utf-8",
    )


def _data_set(path: Path) -> bytes:
    """The bytes of a Part 10 file after its File Meta Information."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    data = path.read_bytes()
    return data[132 + 12 + int(ds.file_meta.FileMetaInformationGroupLength):]


def _push(archive: Orthanc, paths: list[Path]) -> None:
    """Store ``paths`` in Orthanc over REST, then have Orthanc send the study to the appliance by STOW-RS."""
    with archive.rest() as client:
        (study,) = {client.post("/instances", content=p.read_bytes()).raise_for_status().json()["ParentStudy"]
                    for p in paths}
        answer = client.post("/dicom-web/servers/appliance/stow", json={"Resources": [study]}, timeout=300)
    assert answer.status_code == 200, answer.text


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test of a session may wait for the demo run to train engines
def test_mri_and_slide_srs_reach_a_dicomweb_archive_by_stow_rs(
    tmp_path: Path, appliance_dir: Path, serves: list[_e2e.Serve]  # noqa: F811 - fixtures
) -> None:
    node_port, stow_port = free_port(), free_port()
    sender = {"Enable": True, "Root": "/dicom-web/", "Servers": {"appliance": {
        "Url": f"http://127.0.0.1:{stow_port}/dicomweb/", "HttpHeaders": {"Authorization": f"Bearer {TOKEN}"}}}}
    with running_orthanc(tmp_path / "archive", dicomweb=True, users={USER: PASSWORD},
                         extra={"DicomWeb": sender, "HttpTimeout": 120}) as archive:
        config = tmp_path / "appliance.toml"
        _write_config(config, appliance_dir, archive.dicomweb_url, node_port, stow_port)
        serve = _e2e.Serve(config, node_port, tmp_path / "serve.log")
        serves.append(serve)
        serve.start()
        studies = [write_dce_study(tmp_path / "dce", seed=12), write_slide_study(tmp_path / "slide", seed=33)]
        for study in studies:
            _push(archive, study.paths)
        stored = _e2e.wait_for(
            lambda: (r := _e2e.stored_files(appliance_dir)) and len(r) == sum(len(s.paths) for s in studies) and r,
            60, "every pushed instance stored", serve.tail,
        )
        sent = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: p for s in studies for p in s.paths}
        for sop, path in stored.items():  # the data set as Orthanc sent it, behind the appliance's own File Meta
            assert _data_set(path) == _data_set(sent[sop]), sop
        rows = _e2e.wait_for(
            lambda: (r := _e2e.all_delivered(appliance_dir)) and len({x["job_id"] for x in r}) == 2 and r,
            240, "both studies' results delivered to the DICOMweb archive", serve.tail,
        )
        assert {r["destination"] for r in rows} == {"archive"}
        srs = []
        for row in rows:
            ds = pydicom.dcmread(row["path"], stop_before_pixels=True)
            if ds.Modality != "SR":
                continue
            srs.append(ds.StudyInstanceUID)
            with archive.rest() as client:
                found = client.get(f"/dicom-web/studies/{ds.StudyInstanceUID}/instances",
                                   params={"SOPInstanceUID": ds.SOPInstanceUID}).raise_for_status().json()
                assert [f["00080018"]["Value"][0] for f in found] == [ds.SOPInstanceUID]
                (orthanc_id,) = client.post("/tools/find", json={"Level": "Instance",
                                                                 "Query": {"SOPInstanceUID": ds.SOPInstanceUID}}).json()
                stored = client.get(f"/instances/{orthanc_id}/file").raise_for_status().content
            assert stored == Path(row["path"]).read_bytes()
            copy = tmp_path / f"{ds.SOPInstanceUID}.dcm"
            copy.write_bytes(stored)
            errors, output = dciodvfy(copy)
            assert not errors, output
        assert sorted(srs) == sorted(s.study_uid for s in studies)
        assert serve.terminate(timeout=30) == 0, serve.tail()
