"""Where a bundle's files come from, a directory or an uncompressed tar, checked before a byte is written.

Opening a source reads only names, types and sizes: tar headers (bounded:
member count, extended-header size, total size; sparse members refused while
their header is parsed, before tarfile reads their map) or a directory's
entries (count and ``lstat``). :mod:`engines.bundle` then reads the manifest
and its signature, verifies them, and copies only the files the signed
manifest lists, hashing each as it is written (issue 15, finding 9).

Errors about a tar name its members (they are the uploaded content); errors
about a directory name only ``manifest.json``, ``manifest.sig`` and the files
a verified manifest lists, never other entries of the directory, which may be
any path on the machine.
"""

from __future__ import annotations

import os
import stat
import tarfile
from pathlib import Path, PurePosixPath
from typing import IO, Any, NoReturn

from engines.errors import BundleRejected
from engines.manifest import FILE_RE

__all__ = ["MAX_BUNDLE_BYTES", "MAX_HEADER_BYTES", "MAX_MEMBERS", "BundleSource", "open_source"]

MAX_MEMBERS = 256
#: Total size of a bundle's files (a TensorRT plan of a ViT-g tile encoder is a few GB).
MAX_BUNDLE_BYTES = 16 << 30
#: Largest PAX extended or GNU long-name header tarfile may read into memory.
MAX_HEADER_BYTES = 1 << 20
_REGULAR = (tarfile.REGTYPE, tarfile.AREGTYPE)
_HEADER_TYPES = (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE, tarfile.GNUTYPE_LONGNAME,
                 tarfile.GNUTYPE_LONGLINK)


def _sparse(member: tarfile.TarInfo, pax_headers: dict[str, str] | None = None) -> BundleRejected:
    pax = pax_headers or {}
    name = pax.get("GNU.sparse.name", member.name)
    claimed = (pax.get("GNU.sparse.realsize") or pax.get("GNU.sparse.size")  # PAX forms 1.0 and 0.x
               or getattr(member, "_sparse_structs", (None, None, member.size))[2])  # old GNU form
    return BundleRejected(f"tar member {name!r} is a sparse file (it claims {claimed} bytes); "
                          "only regular files are allowed")


class _BoundedTarInfo(tarfile.TarInfo):
    """tarfile's header parser, refusing oversized extended headers and every sparse form before reading it."""

    def _proc_member(self, tarfile: tarfile.TarFile) -> Any:
        if self.type in _HEADER_TYPES and self.size > MAX_HEADER_BYTES:
            raise BundleRejected(f"tar header of {self.size} bytes before member {self.name!r} is larger than "
                                 f"{MAX_HEADER_BYTES} bytes")
        return super()._proc_member(tarfile)  # type: ignore[misc]

    def _proc_sparse(self, tarfile: tarfile.TarFile) -> NoReturn:
        raise _sparse(self)

    def _refuse_pax_sparse(self, next: tarfile.TarInfo, pax_headers: dict[str, str], *args: Any) -> NoReturn:
        raise _sparse(next, pax_headers)

    _proc_gnusparse_00 = _proc_gnusparse_01 = _proc_gnusparse_10 = _refuse_pax_sparse


class BundleSource:
    """The regular files of a bundle by flat name (``sizes``), and how many other entries there are."""

    def __init__(self, description: str, sizes: dict[str, int], others: int) -> None:
        self.description, self.sizes, self.others = description, sizes, others

    def open(self, name: str) -> IO[bytes]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the source."""

    def __enter__(self) -> BundleSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _DirectorySource(BundleSource):
    def __init__(self, root: Path) -> None:
        sizes: dict[str, int] = {}
        others = 0
        with os.scandir(root) as entries:
            for count, entry in enumerate(entries, 1):
                if count > MAX_MEMBERS:
                    raise BundleRejected(f"bundle directory {str(root)!r} has more than {MAX_MEMBERS} entries")
                st = entry.stat(follow_symlinks=False)
                if stat.S_ISREG(st.st_mode) and FILE_RE.match(entry.name):
                    sizes[entry.name] = st.st_size
                else:
                    others += 1
        super().__init__(f"bundle directory {str(root)!r}", sizes, others)
        self.root = root

    def open(self, name: str) -> IO[bytes]:
        fd = os.open(self.root / name, os.O_RDONLY | os.O_NOFOLLOW)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise BundleRejected(f"bundle file {name!r} is not a regular file")
        return os.fdopen(fd, "rb")


def _scan_tar(tar: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """Every member's header, bounded in count and total size; only regular files and folders."""
    members: list[tarfile.TarInfo] = []
    total = 0
    while True:
        try:
            member = tar.next()
        except tarfile.TarError as exc:
            raise BundleRejected(f"tar is unreadable: {exc}") from None
        if member is None:
            return members
        if len(members) >= MAX_MEMBERS:
            raise BundleRejected(f"tar has more than {MAX_MEMBERS} members")
        path = PurePosixPath(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise BundleRejected(f"tar member {member.name!r} escapes the bundle (absolute path or '..')")
        if member.issparse():
            raise _sparse(member)
        if not member.isdir() and member.type not in _REGULAR:
            raise BundleRejected(f"tar member {member.name!r} is a link or special file; "
                                 "only regular files are allowed")
        total += member.size
        if total > MAX_BUNDLE_BYTES:
            raise BundleRejected(f"tar members add up to more than {MAX_BUNDLE_BYTES} bytes")
        members.append(member)


def _flat_members(members: list[tarfile.TarInfo]) -> dict[str, tarfile.TarInfo]:
    """Flat file names: files at the top level, or all in one top folder; nothing nested, no repeats."""
    files: list[tuple[PurePosixPath, tarfile.TarInfo]] = []
    for m in members:
        if m.isdir():
            continue
        parts = [p for p in PurePosixPath(m.name).parts if p != "."]
        if not parts:
            raise BundleRejected(f"tar member {m.name!r} has no file name")
        files.append((PurePosixPath(*parts), m))
    tops = {p.parts[0] for p, _ in files if len(p.parts) == 2}
    flat: dict[str, tarfile.TarInfo] = {}
    for path, m in files:
        if len(path.parts) == 2 and len(tops) == 1:
            name = path.parts[1]
        elif len(path.parts) == 1:
            name = path.parts[0]
        else:
            raise BundleRejected(f"tar member {m.name!r} is nested; a bundle is flat (one optional top folder)")
        if not FILE_RE.match(name):
            raise BundleRejected(f"tar member {m.name!r}: file name must match {FILE_RE.pattern}")
        if name in flat:
            raise BundleRejected(f"tar repeats a file name: {name!r}")
        flat[name] = m
    if tops and any(len(p.parts) == 1 for p, _ in files):
        raise BundleRejected("tar mixes files at the top level with files in a folder")
    return flat


class _TarSource(BundleSource):
    def __init__(self, path: Path) -> None:
        try:
            self.tar = tarfile.open(path, "r:", tarinfo=_BoundedTarInfo)
        except (tarfile.TarError, OSError) as exc:
            raise BundleRejected(
                f"{path.name!r} is neither a bundle directory nor a readable uncompressed tar "
                f"({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
            ) from None
        try:
            self.members = _flat_members(_scan_tar(self.tar))
        except BaseException:
            self.tar.close()
            raise
        super().__init__(f"bundle tar {path.name!r}", {n: m.size for n, m in self.members.items()}, 0)

    def open(self, name: str) -> IO[bytes]:
        stream = self.tar.extractfile(self.members[name])
        if stream is None:
            raise BundleRejected(f"tar member {self.members[name].name!r} has no data")
        return stream

    def close(self) -> None:
        self.tar.close()


def open_source(path: Path) -> BundleSource:
    """A directory or uncompressed tar as a :class:`BundleSource`; BundleRejected when it cannot be one."""
    path = Path(path)
    try:
        st = path.stat()
    except OSError:
        raise BundleRejected(f"bundle {str(path)!r} does not exist") from None
    if stat.S_ISDIR(st.st_mode):
        return _DirectorySource(path)
    if stat.S_ISREG(st.st_mode):
        return _TarSource(path)
    raise BundleRejected(f"bundle {str(path)!r} is neither a directory nor a regular file")
