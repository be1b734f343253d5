"""Deterministic 2.25 UIDs: same inputs, same UID; valid, at most 64 characters."""

from __future__ import annotations

import re

import pytest

from appliance.errors import ReportError
from appliance.reports import uids

UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


@pytest.mark.parametrize("kind", uids.KINDS)
def test_instance_and_series_uids_are_deterministic_and_valid(kind: str) -> None:
    first = uids.sop_instance_uid("job-1", "1.0.0", kind)
    assert first == uids.sop_instance_uid("job-1", "1.0.0", kind)
    series = uids.series_instance_uid("job-1", "1.0.0", kind)
    for value in (first, series):
        assert UID.match(value) and len(value) <= 64
        assert uids.check_uid(value) == value
    assert first != series


@pytest.mark.parametrize(
    ("other_job", "other_version", "other_kind"),
    [("job-2", "1.0.0", "sr"), ("job-1", "1.0.1", "sr"), ("job-1", "1.0.0", "seg")],
)
def test_any_input_change_gives_another_uid(other_job: str, other_version: str, other_kind: str) -> None:
    assert uids.sop_instance_uid("job-1", "1.0.0", "sr") != uids.sop_instance_uid(other_job, other_version, other_kind)


def test_device_uid_follows_the_manifest_hash() -> None:
    a, b = "a" * 64, "b" * 64
    assert uids.device_uid(a) == uids.device_uid(a.upper())
    assert uids.device_uid(a) != uids.device_uid(b)
    with pytest.raises(ReportError, match="64 hexadecimal digits"):
        uids.device_uid("not-a-hash")


def test_unknown_kind_and_bad_uids_are_rejected() -> None:
    with pytest.raises(ReportError, match="object kind 'pdf' is not one of"):
        uids.sop_instance_uid("job", "1", "pdf")
    for bad in ("1.02.3", "1..2", "abc", "1." + "2" * 70):
        with pytest.raises(ReportError, match="is not a valid UID"):
            uids.check_uid(bad)
