"""The demo's fallback PACS is the node's own storage SCP: SRs from the appliance's AE title arrive, others are refused."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file

from appliance.demo._pacs import StoreScpPacs
from tests.peers import STORESCU, peer_env


def _storescu(path: Path, port: int, calling: str, called: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(STORESCU), "-aet", calling, "-aec", called, "127.0.0.1", str(port), str(path)],
                          env=peer_env(), capture_output=True, text=True, timeout=60)


def test_fallback_pacs_stores_srs_from_the_appliance_only(tmp_path: Path) -> None:
    source = get_testdata_file("test-SR.dcm")
    ds = pydicom.dcmread(source)
    pacs = StoreScpPacs(tmp_path / "pacs", calling_ae="APPLIANCE")
    pacs.start()
    try:
        refused = _storescu(Path(source), pacs.port, "STRANGER", pacs.ae_title)
        assert refused.returncode != 0 and pacs.find_sr(str(ds.StudyInstanceUID)) == []
        sent = _storescu(Path(source), pacs.port, "APPLIANCE", pacs.ae_title)
        assert sent.returncode == 0, sent.stderr
        found = pacs.find_sr(str(ds.StudyInstanceUID))
        assert [a.sop_instance_uid for a in found] == [str(ds.SOPInstanceUID)]
        assert Path(found[0].location).is_file() and pacs.find_sr("1.2.3") == []
        assert pydicom.dcmread(found[0].location).SOPInstanceUID == ds.SOPInstanceUID
    finally:
        pacs.stop()


def test_fallback_pacs_index_keeps_the_sink_contract(tmp_path: Path) -> None:
    """A UID stored again under its own series is kept once; under another series it is refused."""
    from dataclasses import replace

    import pytest

    from appliance.demo._pacs import _ReceivedInstances
    from dicom_node.errors import DuplicateInstance
    from dicom_node.scp import InstanceRecord

    record = InstanceRecord("1.2.3.4", "1.2.840.10008.5.1.4.1.1.88.33", "1.2.3", "1.2.3.1", "SR", "", "1.2.840.10008.1.2.1",
                            tmp_path / "a.dcm", 10, "APPLIANCE", 0.0)
    index = _ReceivedInstances()
    index.commit([record, record])
    assert [a.sop_instance_uid for a in index.find_sr("1.2.3")] == ["1.2.3.4"]
    with pytest.raises(DuplicateInstance, match="another study or series"):
        index.commit([replace(record, series_uid="1.2.3.2")])
