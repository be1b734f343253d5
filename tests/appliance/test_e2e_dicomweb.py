"""End to end (issue 19): ``appliance serve`` delivers the SRs of a DCE-MRI study and a WSI study by STOW-RS.

The scanner sends both studies over DICOM; the only destination is Orthanc's
DICOMweb service behind HTTP basic authentication. Each SR is found with
Orthanc's QIDO-RS in its study, read back byte-identical to the outbox file,
and judged by dciodvfy.
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from appliance.demo._scanner import send_study, write_dce_study, write_slide_study
from tests.appliance import _e2e
from tests.appliance.test_e2e import appliance_dir, engine_cache, serves  # noqa: F401 - fixtures
from tests.peers import dciodvfy, free_port, running_orthanc

USER, PASSWORD = "appliance", "e2e-pw"
ROUTES = (
    '[[routes]]\npipeline = "pathology"\nmatch = { Modality = "SM" }\nstable_seconds = 1\n',
    '[[routes]]\npipeline = "breast_mri"\nmatch = { Modality = "MR" }\nstable_seconds = 1\n',
)


def _write_config(path: Path, data_dir: Path, dicomweb_url: str) -> int:
    node_port = free_port()
    path.write_text(
        f'[node]\nae_title = "{_e2e.NODE_AE}"\nhost = "127.0.0.1"\nport = {node_port}\n'
        f'data_dir = "{data_dir}"\nmin_free_bytes = 50000000\n\n'
        f'[[peers]]\nae_title = "{_e2e.SCANNER_AE}"\nhost = "127.0.0.1"\n\n'
        f'[[destinations]]\nname = "archive"\nkind = "dicomweb"\nurl = "{dicomweb_url}"\nbasic = "{USER}:{PASSWORD}"\n\n'
        '[delivery]\ninitial_backoff_seconds = 0.5\nmax_backoff_seconds = 2.0\n\n'
        '[web]\nhost = "127.0.0.1"\nport = 0\n\n' + "\n".join(ROUTES),
        encoding="utf-8",
    )
    return node_port


@pytest.mark.slow
@pytest.mark.timeout(600)  # the first test of a session may wait for the demo run to train engines
def test_mri_and_slide_srs_reach_a_dicomweb_archive_by_stow_rs(
    tmp_path: Path, appliance_dir: Path, serves: list[_e2e.Serve]  # noqa: F811 - fixtures
) -> None:
    with running_orthanc(tmp_path / "archive", dicomweb=True, users={USER: PASSWORD}) as archive:
        config = tmp_path / "appliance.toml"
        node_port = _write_config(config, appliance_dir, archive.dicomweb_url)
        serve = _e2e.Serve(config, node_port, tmp_path / "serve.log")
        serves.append(serve)
        serve.start()
        studies = [write_dce_study(tmp_path / "dce", seed=12), write_slide_study(tmp_path / "slide", seed=33)]
        for study in studies:
            send_study(study, "127.0.0.1", node_port, _e2e.NODE_AE)
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
