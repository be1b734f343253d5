"""The durable spool: names only from valid UIDs, free-space refusal, leftovers removed."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.spool import InvalidUid, Spool, SpoolFull


@pytest.mark.parametrize("bad", ["", "../etc", "1.2.", "1..2", "1.2.abc", "1/2", "1." + "2" * 63, " 1.2"])
def test_file_names_only_from_valid_uids(tmp_path: Path, bad: str) -> None:
    spool = Spool(tmp_path)
    with pytest.raises(InvalidUid, match="not a valid UID"):
        spool.write("1.2", bad, "1.2.3", [b"x"])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_write_is_atomic_and_a_resend_is_kept_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    first = spool.write("1.2", "1.2.3", "1.2.3.4", [b"head", memoryview(b"body")])
    again = spool.write("1.2", "1.2.3", "1.2.3.4", [b"other"])
    assert first.created and not again.created
    assert first.path == tmp_path / "1.2" / "1.2.3" / "1.2.3.4.dcm"
    assert first.path.read_bytes() == b"headbody"
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["1.2.3.4.dcm"]


def test_low_free_space_refuses_and_leaves_nothing(tmp_path: Path) -> None:
    spool = Spool(tmp_path, min_free_bytes=2**62)
    with pytest.raises(SpoolFull, match="min_free_bytes"):
        spool.write("1.2", "1.2.3", "1.2.3.4", [b"x" * 100])
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_leftover_temporaries_are_removed(tmp_path: Path) -> None:
    spool = Spool(tmp_path)
    kept = spool.write("1.2", "1.2.3", "1.2.3.4", [b"x"]).path
    leftover = kept.with_name("1.2.3.5.dcm.99-1.tmp")
    leftover.write_bytes(b"partial")
    assert spool.remove_temporaries() == 1
    assert not leftover.exists() and kept.exists()
