"""Receiving a C-STORE's data set straight to disk as its P-DATA fragments arrive.

pynetdicom gathers a message's data set in a ``BytesIO`` (PS3.8 Annex E:
fragments of one message, in order) and hands the whole of it to the service
class. :class:`StreamingDimse` keeps pynetdicom's decoding of command sets and
of every other message, but once a C-STORE-RQ's command set is complete it
asks the server's receiver (the storage SCP) for a :class:`Reception` and hands
each data fragment to it: the reception scans it
(:class:`dicom_node._scan.StreamScanner`) and appends it to the spool's
incoming file, so the memory an association holds is one PDU and one write
block, whatever the instance's size. When the last fragment arrives the
C-STORE primitive goes to the association as usual, carrying the reception
instead of the data set; the storage handler finishes it (fsync, rename,
commit).

A reception that fails early (the data set is too large for its SOP class, a
deflate bomb, a full disk, an invalid UID in the command set) stops writing and
scanning and discards its file; the rest of the message is read and dropped, and
the answer is a failure status, never an abort.
"""

from __future__ import annotations

import logging
import queue
from typing import Any, Protocol

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RQ, DIMSEMessage
from pynetdicom.pdu_primitives import P_DATA

from dicom_node._c_store import encode_c_store_rsp
from dicom_node._scan import DatasetHeader, StreamScanner
from dicom_node.errors import NodeError
from dicom_node.spool import IncomingFile
from dicom_node.uids import is_valid_uid

__all__ = ["Reception", "Receiver", "StreamingDimse"]

logger = logging.getLogger(__name__)

#: a command set, or the data set of a message other than C-STORE, longer than this aborts the association
MAX_SMALL_MESSAGE = 1 << 20


class RefusedCommand(NodeError):
    """The C-STORE-RQ command set cannot be served (invalid UID, unknown context); carries its status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class Reception:
    """One C-STORE data set being received: scanned and written as it arrives.

    ``failure`` holds the first error; after it nothing more is written and the
    file is gone. ``incoming`` and ``scanner`` are None for a reception refused
    from its command set.
    """

    def __init__(
        self, incoming: IncomingFile | None, scanner: StreamScanner | None, failure: NodeError | None = None
    ) -> None:
        self.incoming = incoming
        self.scanner = scanner
        self.failure = failure

    def write(self, data: bytes | memoryview) -> None:
        """Scan and store the next fragment; an error is kept in ``failure``, never raised."""
        if self.failure is not None or self.scanner is None or self.incoming is None:
            return
        try:
            self.scanner.feed(data)
            self.incoming.write(data)
        except NodeError as exc:
            self.fail(exc)

    def finish(self) -> DatasetHeader:
        """Check the data set is complete; raises the reception's failure or :class:`MalformedDataset`."""
        if self.failure is not None:
            raise self.failure
        assert self.scanner is not None
        try:
            return self.scanner.finish()
        except NodeError as exc:
            self.fail(exc)
            raise

    def fail(self, exc: NodeError) -> None:
        if self.failure is None:
            self.failure = exc
        self.abandon()

    def abandon(self) -> None:
        """Remove the incoming file (idempotent)."""
        if self.incoming is not None:
            self.incoming.discard()


class Receiver(Protocol):
    """What the server offers :class:`StreamingDimse`: a reception for a C-STORE-RQ's data set."""

    def begin_reception(self, assoc: Any, context_id: int, command: Any) -> Reception: ...


class StreamingDimse(DIMSEServiceProvider):
    """pynetdicom's DIMSE provider, streaming C-STORE data sets to a :class:`Reception`."""

    _reception: Reception | None = None

    def receive_primitive(self, primitive: P_DATA) -> None:
        """Route each PDV: C-STORE data to the reception, everything else through pynetdicom (PS3.8 E.2)."""
        receiver = getattr(getattr(self.assoc, "_server", None), "receiver", None)
        if receiver is None:
            super().receive_primitive(primitive)
            return
        for context_id, data in primitive.presentation_data_value_list:
            reception = self._reception
            if reception is not None and not data[0] & 1:
                reception.write(memoryview(data)[1:])
                if data[0] & 2:
                    self._complete(reception)
                continue
            single = P_DATA()
            single.presentation_data_value_list.append([context_id, data])  # type: ignore[arg-type]
            super().receive_primitive(single)
            message = self.message
            if message is None:
                continue
            if message.encoded_command_set.tell() + (message.data_set.tell() if message.data_set else 0) > MAX_SMALL_MESSAGE:
                logger.warning("association aborted: a DIMSE message larger than %d bytes is not a C-STORE",
                               MAX_SMALL_MESSAGE)
                self.message = None
                self.dul.event_queue.put("Evt19")
                return
            if isinstance(message, C_STORE_RQ) and message.context_id is not None and self._reception is None:
                self._reception = self._begin(receiver, message)

    def _begin(self, receiver: Receiver, message: DIMSEMessage) -> Reception:
        try:
            return receiver.begin_reception(self.assoc, int(message.context_id or 0), message.command_set)
        except NodeError as exc:
            return Reception(None, None, exc)

    def _complete(self, reception: Reception) -> None:
        """The last fragment arrived: queue the C-STORE primitive, or answer a refused command at once."""
        self._reception = None
        message, self.message = self.message, None
        if message is None:
            return
        context_id = int(message.context_id or 0)
        failure = reception.failure
        primitive: Any = None
        if not isinstance(failure, RefusedCommand):
            try:
                primitive = message.message_to_primitive()
            except Exception as exc:  # noqa: BLE001 - pynetdicom refuses the command set's values
                failure = RefusedCommand(f"C-STORE-RQ command set not valid: {exc}", 0xC000)
        if primitive is None:
            reception.fail(failure)  # type: ignore[arg-type]
            self._answer_refused(message, context_id, failure)  # type: ignore[arg-type]
            return
        evt.trigger(self.assoc, evt.EVT_DIMSE_RECV, {"message": message})
        primitive._reception = reception
        self.msg_queue.put((context_id, primitive))

    def _answer_refused(self, message: DIMSEMessage, context_id: int, failure: RefusedCommand) -> None:
        command = message.command_set
        logger.warning("C-STORE refused: %s", failure)
        sop_class, sop_instance = (str(command.get(keyword, "") or "").strip("\0 ")
                                   for keyword in ("AffectedSOPClassUID", "AffectedSOPInstanceUID"))
        rsp = encode_c_store_rsp(  # an invalid UID is not echoed: the peer's decoder may refuse it too
            int(command.get("MessageID", 0) or 0),
            sop_class if is_valid_uid(sop_class) else "",
            sop_instance if is_valid_uid(sop_instance) else "",
            failure.status,
        )
        pdata = P_DATA()
        pdata.presentation_data_value_list.append((context_id, b"\x03" + rsp))
        self.dul.send_pdu(pdata)

    def abandon(self) -> None:
        """The association ended: remove the files of receptions that were not served."""
        if self._reception is not None:
            self._reception.abandon()
            self._reception = None
        while True:
            try:
                _, item = self.msg_queue.get(block=False)
            except queue.Empty:
                return
            reception = getattr(item, "_reception", None)
            if reception is not None:
                reception.abandon()
