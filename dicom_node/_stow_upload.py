"""One STOW-RS request body being received: its parts parsed as they stream in, each stored as it completes.

:class:`Upload` is the :class:`~dicom_node._multipart.MultipartReader`'s
callbacks. A part's bytes go to its :class:`~dicom_node._stow_part.PartReceiver`
on the event loop (scanned and written to its incoming spool file as they
arrive); once the part is complete, its blocking steps (fsync, rename, row
commit) run on the server's thread pool while the next part streams in, at
most :data:`MAX_IN_FLIGHT` at a time. Concurrent instances share the store's
group commit. An instance is answered stored only once its future has
returned success, i.e. after fsync, rename and commit.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import Executor

from dicom_node._stow_part import PartReceiver, ReceivedPart, store_part
from dicom_node._stow_response import InstanceResult
from dicom_node.store import InstanceStore

__all__ = ["MAX_IN_FLIGHT", "Upload"]

#: completed parts of one request being made durable at once
MAX_IN_FLIGHT = 8


def _result(store: InstanceStore, part: ReceivedPart, source: str, study_uid: str) -> InstanceResult:
    outcome = store_part(store, part, source, study_uid)
    return InstanceResult(part.sop_class_uid, part.sop_instance_uid, outcome)


class Upload:
    """The parts of one request; ``source`` is the authenticated client's name, ``study_uid`` the URL's (or empty)."""

    def __init__(self, store: InstanceStore, source: str, study_uid: str, executor: Executor,
                 sop_classes: frozenset[str]) -> None:
        self._store, self._source, self._study_uid = store, source, study_uid
        self._executor, self._sop_classes = executor, sop_classes
        self._current: PartReceiver | None = None
        self._ended: list[ReceivedPart] = []
        self._futures: list[asyncio.Future[InstanceResult]] = []

    # the reader's callbacks (synchronous, on the event loop)
    def on_part(self, headers: dict[str, str]) -> None:
        self._current = PartReceiver(self._store, self._source, headers, self._sop_classes)

    def on_data(self, data: bytes) -> None:
        assert self._current is not None
        self._current.write(data)

    def on_end(self) -> None:
        assert self._current is not None
        self._ended.append(self._current.end())
        self._current = None

    async def submit(self) -> None:
        """Hand completed parts to the thread pool; wait while too many are in flight."""
        loop = asyncio.get_running_loop()
        for part in self._ended:
            self._futures.append(loop.run_in_executor(
                self._executor, _result, self._store, part, self._source, self._study_uid))
        self._ended.clear()
        while True:
            running = [future for future in self._futures if not future.done()]
            if len(running) < MAX_IN_FLIGHT:
                return
            await asyncio.wait(running, return_when=asyncio.FIRST_COMPLETED)

    def abandon(self) -> None:
        """The body did not arrive whole: the part in progress and parts not yet handed over leave nothing."""
        if self._current is not None:
            self._current.abandon()
            self._current = None
        for part in self._ended:
            if part.reception is not None:
                part.reception.abandon()
        self._ended.clear()

    async def results(self) -> list[InstanceResult]:
        """The results of every part handed over, in request order, once each is settled."""
        return list(await asyncio.gather(*self._futures))
