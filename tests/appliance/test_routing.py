"""Routing rules: exact and regex matches, first match wins, unrouted series kept and logged opaquely."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from appliance.config import RouteSettings, parse_config
from appliance.routing import match_route, opaque_id, route_open_series, value_matches
from appliance.state import StateStore
from tests.appliance._spooled import PATIENT_ID, PATIENT_NAME, spool_instance

ROUTES = parse_config(
    {
        "routes": [
            {"pipeline": "breast_mri", "match": {"Modality": "MR", "SeriesDescription": "re:(?i)dce|dyn"}},
            {"pipeline": "pathology", "match": {"Modality": "SM"}},
            {"pipeline": "breast_mri", "match": {"Modality": "MR"}, "priority": 0},
        ]
    }
).routes


@pytest.mark.parametrize(
    ("pattern", "value", "expected"),
    [
        ("MR", "MR", True),
        ("MR", "MRI", False),
        ("re:^MR", "MRI", True),
        ("re:(?i)breast", "Left BREAST dce", True),
        ("re:^T2$", "T2 fs", False),
        ("DERIVED\\SECONDARY", ["DERIVED", "SECONDARY"], True),
        ("re:\\\\SECONDARY$", ["DERIVED", "SECONDARY"], True),
        ("7", 7, True),
    ],
)
def test_value_matches(pattern: str, value: object, expected: bool) -> None:
    assert value_matches(pattern, value) is expected


def _header(**tags: str) -> Dataset:
    ds = Dataset()
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return ds


@pytest.mark.parametrize(
    ("tags", "expected"),
    [
        ({"Modality": "MR", "SeriesDescription": "Ax DCE 5 phases"}, 0),  # first match wins over route 2
        ({"Modality": "MR", "SeriesDescription": "Ax T2"}, 2),
        ({"Modality": "MR"}, 2),  # absent keyword never matches
        ({"Modality": "SM"}, 1),
        ({"Modality": "CT"}, None),
    ],
)
def test_first_match_wins(tags: dict[str, str], expected: int | None) -> None:
    assert match_route(ROUTES, _header(**tags)) == expected


def test_empty_match_matches_everything() -> None:
    assert match_route((RouteSettings(pipeline="pathology"),), _header(Modality="CT")) == 0


def test_route_open_series_reads_spool(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = StateStore.for_data_dir(data_dir)
    study = generate_uid()
    dce, t2, ct = generate_uid(), generate_uid(), generate_uid()
    spool_instance(store, data_dir, study, dce, description="dyn breast")
    spool_instance(store, data_dir, study, dce, description="dyn breast")
    spool_instance(store, data_dir, study, t2, description="T2 tse")
    spool_instance(store, data_dir, study, ct, modality="CT", description="chest")
    with caplog.at_level(logging.DEBUG, logger="appliance"):
        decided = route_open_series(store, ROUTES)
    assert decided == {dce: 0, t2: 2, ct: None}
    rows = {r["series_uid"]: (r["state"], r["route"]) for r in store.query("select * from series")}
    assert rows == {dce: ("routed", 0), t2: ("routed", 2), ct: ("unrouted", None)}
    assert route_open_series(store, ROUTES) == {}, "routed series are not routed again"
    assert opaque_id(ct) in caplog.text
    for secret in (PATIENT_NAME, PATIENT_ID, ct, study):
        assert secret not in caplog.text


def test_unreadable_first_instance_fails_its_series_only(data_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An unreadable instance marks its series failed with a reason; the other series are still routed."""
    store = StateStore.for_data_dir(data_dir)
    study, bad, good = generate_uid(), generate_uid(), generate_uid()
    path = spool_instance(store, data_dir, study, bad)
    path.write_bytes(Path(get_testdata_file("MR_truncated.dcm")).read_bytes()[:100])
    spool_instance(store, data_dir, study, good, modality="SM")
    with caplog.at_level(logging.INFO):
        decided = route_open_series(store, ROUTES)
    assert decided[bad] is None and decided[good] is not None
    rows = {r["series_uid"]: (r["state"], r["reason"]) for r in store.query("select series_uid, state, reason from series")}
    assert rows[bad][0] == "failed" and "cannot read the header" in rows[bad][1]
    assert rows[good][0] == "routed"
    assert bad not in caplog.text and opaque_id(bad) in caplog.text


def test_deeply_nested_instance_fails_its_series_and_routing_goes_on(data_dir: Path) -> None:
    """Issue 15 finding 5: a header whose reading recurses too deep stops only its own series, every pass."""
    from tests.dicom_node._crafted import deeply_nested

    store = StateStore.for_data_dir(data_dir)
    study, bad = generate_uid(), generate_uid()
    path = spool_instance(store, data_dir, study, bad)
    deeply_nested(path, 3000)
    assert route_open_series(store, ROUTES) == {bad: None}
    (row,) = store.query("select state, reason from series")
    assert row["state"] == "failed" and "RecursionError" in row["reason"]
    later = generate_uid()
    spool_instance(store, data_dir, study, later, modality="SM")
    assert route_open_series(store, ROUTES) == {later: 1}


def test_routing_reads_the_scanned_header_not_the_file(data_dir: Path) -> None:
    """The node's scanned header is what routing matches; the spooled file is not opened again."""
    from dataclasses import replace

    from appliance.ingest import StoreSink
    from dicom_node._scan import scan_dataset
    from dicom_node.scp import InstanceRecord
    from tests.dicom_node._node import dataset_bytes

    store = StateStore.for_data_dir(data_dir)
    source = Path(get_testdata_file("MR_small.dcm"))
    scanned = scan_dataset(dataset_bytes(source), "1.2.840.10008.1.2.1")
    series = scanned.series_uid
    record = InstanceRecord(scanned.sop_instance_uid, scanned.sop_class_uid, scanned.study_uid, series, "MR", "",
                            "1.2.840.10008.1.2.1", data_dir / "absent.dcm", 1, "SCANNER1", 1.0)
    StoreSink(store).commit([replace(record, header=scanned.blob, header_syntax=scanned.blob_syntax)])
    assert route_open_series(store, ROUTES) == {series: 2}  # Modality MR, no DCE description: route 2
