"""Find the files an index run reads, read them safely, and keep two runs on one collection apart.

The scan reports everything it cannot use by name (an unreadable folder or file, a symlink loop, a named pipe,
a file over the size limit) instead of skipping it silently, and says which already-indexed paths must be
kept because they could not be looked at this time: a folder that cannot be listed is not a folder whose
files were deleted. Only regular files are ever opened, so a named pipe or a device cannot hang the run.
This module does not parse, chunk or store anything.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ._loaders import SUPPORTED_SUFFIXES
from .errors import InputError

try:
    import fcntl
except ImportError:  # not on Windows: runs are not serialised there
    fcntl = None

__all__ = ["Scan", "collection_lock", "read_regular", "scan_paths"]


@dataclass
class Scan:
    """What a scan found: files as (abspath, display path), the resolved roots, unsupported files seen,
    (display path, reason) for each thing skipped, and the absolute paths (files or folders) whose indexed
    documents must be kept because they could not be read this time."""

    files: list[tuple[Path, str]] = field(default_factory=list)
    roots: list[Path] = field(default_factory=list)
    ignored: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    keep: list[str] = field(default_factory=list)
    listed: set[str] = field(default_factory=set)

    def kept(self, abspath: str) -> bool:
        return any(abspath == k or abspath.startswith(k + os.sep) for k in self.keep)


def _reason(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "symlink loop"
    return f"unreadable ({exc.strerror or exc})"


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "named pipe"), (stat.S_ISSOCK, "socket"), (stat.S_ISCHR, "device"),
                       (stat.S_ISBLK, "device"), (stat.S_ISDIR, "folder")):
        if test(mode):
            return name
    return "special file"


def scan_paths(paths: Iterable[Path], max_bytes: int) -> Scan:
    """Walk `paths` (files or folders). Hidden entries and __pycache__ are left out; symlinked files are
    followed, symlinked folders are not (so a folder cycle cannot be entered)."""
    scan = Scan()
    for given in paths:
        p = Path(given)
        if not os.path.lexists(p):
            raise InputError(f"path not found: {given}", "check the spelling, or index an existing folder")
        absolute = os.path.realpath(p)
        try:
            st = os.stat(p)
        except OSError as exc:  # a loop or a dangling link given by name
            scan.skipped.append((str(given), _reason(exc)))
            scan.keep.append(absolute)
            continue
        scan.roots.append(Path(absolute))
        if stat.S_ISDIR(st.st_mode):
            _walk(p, scan, max_bytes)
        else:
            _add_file(scan, p, str(given), st, max_bytes)
    return scan


def _add_file(scan: Scan, path: Path, display: str, st: os.stat_result, max_bytes: int) -> None:
    absolute = os.path.realpath(path)
    if not stat.S_ISREG(st.st_mode):
        scan.skipped.append((display, f"not a regular file ({_kind(st.st_mode)})"))
    elif st.st_size > max_bytes:
        scan.skipped.append((display, f"too large ({st.st_size / 1e6:.3g} MB, the limit is "
                                      f"{max_bytes / 1e6:.3g} MB: raise max_file_mb to index it)"))
        scan.keep.append(absolute)  # not read: its old document may still be right
    elif absolute not in scan.listed:  # a link and its target (or a path given twice) are one document
        scan.listed.add(absolute)
        scan.files.append((Path(absolute), display))


def _walk(top: Path, scan: Scan, max_bytes: int) -> None:
    # an explicit stack, not recursion or os.walk: os.walk drops a folder it cannot list without a word
    stack = [top]
    while stack:
        folder = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            display = os.path.normpath(str(folder))
            scan.skipped.append((display + os.sep, f"folder {_reason(exc)}"))
            scan.keep.append(os.path.realpath(folder))
            continue
        subfolders = []
        for entry in entries:
            if entry.name.startswith("."):
                continue
            display = os.path.normpath(os.path.join(str(folder), entry.name))
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name != "__pycache__":
                        subfolders.append(Path(folder) / entry.name)
                    continue
                st = entry.stat(follow_symlinks=True)
            except OSError as exc:
                if exc.errno == errno.ENOENT and entry.is_symlink():  # a dangling link: its target is gone
                    if Path(entry.name).suffix.lower() in SUPPORTED_SUFFIXES:
                        scan.skipped.append((display, "broken symbolic link"))
                    else:
                        scan.ignored += 1
                    continue
                scan.skipped.append((display, _reason(exc)))
                scan.keep.append(os.path.realpath(os.path.join(folder, entry.name)))
                continue
            if stat.S_ISDIR(st.st_mode):  # a symlinked folder: not followed
                continue
            if Path(entry.name).suffix.lower() not in SUPPORTED_SUFFIXES:
                scan.ignored += 1
                continue
            _add_file(scan, Path(folder) / entry.name, display, st, max_bytes)
        stack.extend(reversed(subfolders))  # popped in name order, as os.walk visits them


def read_regular(path: Path) -> bytes:
    """The bytes of `path`, refusing anything but a regular file. Opened non-blocking and checked on the open
    descriptor, so a file swapped for a named pipe after the scan still cannot hang the read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, f"not a regular file ({_kind(st.st_mode)})")
        chunks = []
        while True:
            block = os.read(fd, 1 << 20)
            if not block:
                return b"".join(chunks)
            chunks.append(block)
    finally:
        os.close(fd)


@contextlib.contextmanager
def collection_lock(folder: Path, name: str = "index.lock",
                    on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """Hold an advisory lock (flock) on `folder/name`; calls `on_wait` once if another process holds it,
    then waits. The kernel drops the lock when the holder exits, also on a crash or kill."""
    if fcntl is None:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fh = open(folder / name, "a+b")
    except OSError:  # a read-only collection folder: nothing can write it, so there is nothing to serialise
        yield
        return
    with fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait:
                on_wait()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
