"""The Store Instances Response of STOW-RS (PS3.18 10.5.3) and its HTTP status.

The response payload is one data set in the DICOM JSON model (PS3.18 F.2),
media type ``application/dicom+json``: the Referenced SOP Sequence (0008,1199)
lists what was stored, the Failed SOP Sequence (0008,1198) what was not, each
with its Failure Reason (0008,1197). The HTTP status: 200 when every instance
was stored, 202 when some were and some failed, 409 when none was.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from http import HTTPStatus

from pydicom.dataset import Dataset

from dicom_node.store import Outcome

__all__ = ["DICOM_JSON", "InstanceResult", "store_instances_response"]

DICOM_JSON = "application/dicom+json"


@dataclass(frozen=True)
class InstanceResult:
    """One instance of a request: its UIDs (empty when the part could not be read) and its outcome."""

    sop_class_uid: str
    sop_instance_uid: str
    outcome: Outcome


def _item(result: InstanceResult) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = result.sop_class_uid
    item.ReferencedSOPInstanceUID = result.sop_instance_uid
    if not result.outcome.ok:
        item.FailureReason = int(result.outcome.status)
    return item


def store_instances_response(results: Sequence[InstanceResult]) -> tuple[int, bytes]:
    """The HTTP status and ``application/dicom+json`` body for the results of one request (PS3.18 10.5.3).

    No Retrieve URL is given: the appliance stores, it does not serve WADO-RS.
    """
    stored = [r for r in results if r.outcome.ok]
    failed = [r for r in results if not r.outcome.ok]
    response = Dataset()
    if failed:
        response.FailedSOPSequence = [_item(r) for r in failed]
    response.ReferencedSOPSequence = [_item(r) for r in stored]
    if not failed:
        status = HTTPStatus.OK
    elif stored:
        status = HTTPStatus.ACCEPTED
    else:
        status = HTTPStatus.CONFLICT
    return int(status), json.dumps(response.to_json_dict()).encode("utf-8")
