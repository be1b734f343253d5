"""The event-driven acceptor: its C-STORE-RSP encoding equals pynetdicom's, and it is in use."""

from __future__ import annotations

import pytest
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import encode

from dicom_node.speedups import SUPPORTED, encode_c_store_rsp

MR = "1.2.840.10008.5.1.4.1.1.4"


@pytest.mark.parametrize(
    ("message_id", "sop_instance_uid"),
    [(1, "1.2.3.4"), (2, "1.2.3.45"), (65535, "1.2.826.0.1.3680043.8.498.1234567890123456789012345678901234567")],
)
def test_c_store_rsp_bytes_equal_pynetdicoms(message_id: int, sop_instance_uid: str) -> None:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = message_id
    rsp.AffectedSOPClassUID = MR
    rsp.AffectedSOPInstanceUID = sop_instance_uid
    rsp.Status = 0x0000
    message = C_STORE_RSP()
    message.primitive_to_message(rsp)
    expected = encode(message.command_set, True, True)
    assert encode_c_store_rsp(message_id, MR, sop_instance_uid, 0x0000) == expected


def test_installed_pynetdicom_gets_the_event_driven_loops() -> None:
    assert SUPPORTED, "pynetdicom is not 3.0.x: the node falls back to pynetdicom's polling acceptor"
