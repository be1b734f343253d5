"""The durable spool: received instances as files named only by validated UIDs.

Layout: ``<root>/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.
Every file is written to a temporary name in its final directory, fsync'd,
renamed, and its directory fsync'd (shared/DESIGN.md invariant 1), so after a
crash a file either exists whole under its final name or not at all; leftover
temporary files are removed by :meth:`Spool.remove_temporaries` at start.
Names come only from UIDs that pass :func:`dicom_node.uids.is_valid_uid`
(invariant 2; PS3.5 section 9.1), never from free text.

A received instance streams into an :class:`IncomingFile` (a temporary file in
``<root>/.incoming``, same file system) while its P-DATA arrives; only once it
is complete and scanned is it fsync'd and renamed under its final name.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from dicom_node.errors import NodeError
from dicom_node.uids import is_valid_uid
from engines.files import fsync_dir  # the project's one durable-file home (a standard-library-only leaf module)

__all__ = [
    "IncomingFile", "InvalidUid", "NotDurable", "Spool", "SpoolFull", "SpooledFile", "check_uid",
]

logger = logging.getLogger(__name__)

TEMP_SUFFIX = ".tmp"
INCOMING = ".incoming"  #: where instances stream in before they have a name
#: an incoming file is written in blocks of this size (the memory it holds)
WRITE_BLOCK = 1 << 20
#: free space is checked again after every this many bytes of a streaming instance
ROOM_CHECK_BYTES = 64 << 20
_counter = itertools.count()


class InvalidUid(NodeError):
    """A UID that may not become part of a file name (not a valid UID per PS3.5 section 9.1)."""


class NotDurable(NodeError):
    """The instance could not be made durable (write, fsync or rename failed)."""


class SpoolFull(NotDurable):
    """Free space on the spool's file system is below ``min_free_bytes``."""


@dataclass(frozen=True)
class SpooledFile:
    """A file under its final name; ``created`` is False when it already existed (a re-send)."""

    path: Path
    size: int
    created: bool


def check_uid(value: str, what: str) -> str:
    """Return ``value`` if it is a valid UID, else raise :class:`InvalidUid` naming ``what``."""
    if not is_valid_uid(value):
        shown = value if len(value) <= 80 else value[:80] + "..."
        raise InvalidUid(
            f"{what} {shown!r} is not a valid UID (digit components without leading zeros, dots, at most 64 characters)"
        )
    return value


def _existing(final: Path, sync_dir: bool) -> SpooledFile:
    """An instance file already stored (a re-send): made durable, returned with ``created=False``."""
    if sync_dir:
        try:
            fsync_dir(final.parent)  # it may have been renamed by a concurrent store a moment ago
        except OSError as exc:
            raise NotDurable(f"cannot sync {str(final.parent)!r}: {exc.strerror}") from None
    return SpooledFile(final, final.stat().st_size, created=False)


class Spool:
    """Durable files under ``root``; refuses writes when free space would drop below ``min_free_bytes``."""

    def __init__(self, root: Path | str, min_free_bytes: int = 0) -> None:
        self.root = Path(root)
        self.min_free_bytes = min_free_bytes
        self._mkdir_lock = threading.Lock()
        self.root.mkdir(parents=True, exist_ok=True)

    def path_for(self, study_uid: str, series_uid: str, sop_instance_uid: str) -> Path:
        """The final path of an instance; every UID is validated first."""
        return (
            self.root
            / check_uid(study_uid, "Study Instance UID")
            / check_uid(series_uid, "Series Instance UID")
            / (check_uid(sop_instance_uid, "SOP Instance UID") + ".dcm")
        )

    def free_bytes(self) -> int:
        """Bytes available to this (unprivileged) process on the spool's file system."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize

    def check_room(self, incoming: int) -> None:
        """Raise :class:`SpoolFull` unless ``incoming`` bytes leave at least ``min_free_bytes`` free."""
        free = self.free_bytes()
        if free - incoming < self.min_free_bytes:
            raise SpoolFull(
                f"spool {str(self.root)!r} has {free} bytes free; storing {incoming} more would leave less "
                f"than min_free_bytes={self.min_free_bytes}"
            )

    def _make_dirs(self, directory: Path) -> None:
        """Create the study/series directories, fsync'ing each parent whose entries changed."""
        if directory.is_dir():
            return
        with self._mkdir_lock:
            missing = []
            current = directory
            while not current.is_dir():
                missing.append(current)
                current = current.parent
            for path in reversed(missing):
                path.mkdir(exist_ok=True)
                fsync_dir(path.parent)

    def write(
        self,
        study_uid: str,
        series_uid: str,
        sop_instance_uid: str,
        chunks: Sequence[bytes | memoryview],
        sync_dir: bool = True,
    ) -> SpooledFile:
        """Write ``chunks`` durably as one instance file and return it.

        With ``sync_dir=False`` the caller must :func:`fsync_dir` the file's parent
        before treating it as durable (lets a group commit sync a directory once for
        many files). An instance whose file exists already is not written again.
        """
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        size = sum(len(chunk) for chunk in chunks)
        if final.exists():
            return _existing(final, sync_dir)
        self.check_room(size)
        temp = final.with_name(f"{final.name}.{os.getpid()}-{next(_counter)}{TEMP_SUFFIX}")
        renamed = False
        try:
            self._make_dirs(final.parent)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
            try:
                for chunk in chunks:
                    view = memoryview(chunk)
                    while view:
                        written = os.write(fd, view)
                        view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(temp, final)
            renamed = True
            if sync_dir:
                fsync_dir(final.parent)
        except OSError as exc:
            _unlink_quietly(final if renamed else temp)  # a rename not known durable is taken back
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"spool {str(self.root)!r} is full: {exc.strerror}") from None
            raise NotDurable(f"cannot store an instance in {str(self.root)!r}: {exc.strerror}") from None
        return SpooledFile(final, size, created=True)

    def incoming(self) -> IncomingFile:
        """A new temporary file for an instance that streams in (see :class:`IncomingFile`)."""
        self.check_room(0)
        directory = self.root / INCOMING
        self._make_dirs(directory)
        temp = directory / f"{os.getpid()}-{next(_counter)}{TEMP_SUFFIX}"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o640)
        except OSError as exc:
            raise NotDurable(f"cannot create {str(temp)!r}: {exc.strerror}") from None
        return IncomingFile(self, temp, fd)

    def place(self, incoming: IncomingFile, study_uid: str, series_uid: str, sop_instance_uid: str,
              sync_dir: bool = True) -> SpooledFile:
        """Make a complete :class:`IncomingFile` durable under its final name (fsync, rename, directory fsync).

        When the final file exists already (a re-send) the incoming one is removed and
        the existing one returned with ``created=False``.
        """
        final = self.path_for(study_uid, series_uid, sop_instance_uid)
        size = incoming.close()
        if final.exists():
            incoming.discard()
            return _existing(final, sync_dir)
        renamed = False
        try:
            self._make_dirs(final.parent)
            os.rename(incoming.path, final)
            renamed = True
            if sync_dir:
                fsync_dir(final.parent)
        except OSError as exc:
            _unlink_quietly(final if renamed else incoming.path)
            raise NotDurable(f"cannot store an instance in {str(self.root)!r}: {exc.strerror}") from None
        return SpooledFile(final, size, created=True)

    def discard(self, path: Path) -> None:
        """Remove a file written by :meth:`write` whose row could not be committed."""
        _unlink_quietly(path)
        try:
            fsync_dir(path.parent)
        except OSError:
            pass

    def temporaries(self) -> Iterable[Path]:
        """Temporary files left by an interrupted write (every ``*.tmp`` under the root)."""
        for directory, _dirs, files in os.walk(self.root):
            for name in files:
                if name.endswith(TEMP_SUFFIX):
                    yield Path(directory) / name

    def remove_temporaries(self) -> int:
        """Delete leftover temporary files (run at start, before accepting associations)."""
        removed = 0
        for path in list(self.temporaries()):
            _unlink_quietly(path)
            removed += 1
        if removed:
            logger.warning("removed %d temporary file(s) left by an interrupted store", removed)
        return removed


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class IncomingFile:
    """An instance being received: written in blocks of :data:`WRITE_BLOCK` bytes as it arrives, fsync'd on close.

    Holds at most one block in memory. :meth:`write` raises :class:`NotDurable`
    (or :class:`SpoolFull`) when the file cannot be written; the owner then
    discards it (:meth:`discard`). :meth:`Spool.place` gives it its final name.
    """

    def __init__(self, spool: Spool, path: Path, fd: int) -> None:
        self.spool = spool
        self.path = path
        self._fd = fd
        self._block = bytearray()
        self.size = 0
        self._checked = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append ``data``; raises :class:`NotDurable` when the disk refuses it."""
        self._block += data
        self.size += len(data)
        if len(self._block) >= WRITE_BLOCK:
            self._flush()
        if self.size - self._checked >= ROOM_CHECK_BYTES:
            self._checked = self.size
            self.spool.check_room(0)

    def _flush(self) -> None:
        view = memoryview(self._block)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise SpoolFull(f"spool {str(self.spool.root)!r} is full: {exc.strerror}") from None
            raise NotDurable(f"cannot write {str(self.path)!r}: {exc.strerror}") from None
        finally:
            view.release()
        self._block.clear()

    def close(self) -> int:
        """Write what is buffered, fsync and close; return the file's size."""
        if self._fd < 0:
            return self.size
        try:
            self._flush()
            os.fsync(self._fd)
        except OSError as exc:
            raise NotDurable(f"cannot sync {str(self.path)!r}: {exc.strerror}") from None
        finally:
            os.close(self._fd)
            self._fd = -1
        return self.size

    def __del__(self) -> None:
        # a reception dropped unserved (pynetdicom refused the message, the association ended) leaves no file
        try:
            if self._fd >= 0:
                self.discard()
        except Exception:  # noqa: BLE001 - nothing may escape a finalizer
            pass

    def discard(self) -> None:
        """Close (without syncing) and remove the file; safe to call twice."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
        self._block = bytearray()
        _unlink_quietly(self.path)
