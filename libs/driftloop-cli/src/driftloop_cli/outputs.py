"""Writing to a path the user chose, without ever replacing what is not ours to replace.

Every command that writes where `-o`/`--out` points goes through `open_output`,
so the rule lives once:

- `-` is standard output, and `/dev/stdout`, `/dev/fd/N`, `/proc/self/fd/N`
  are written through the descriptor the shell handed us (its offset shared,
  so `>>` appends), never reopened or replaced;
- a path that exists and is not a regular file (a character device such as
  `/dev/null`, a FIFO, a terminal) is opened and written in place: renaming a
  file over it would, run as root, replace the device node;
- anything else (a regular file, or nothing yet) is written to a `.partial`
  file beside it, flushed to disk, then renamed over the target, so the target
  holds either its old bytes or all the new ones. On any failure inside the
  block the partial file is removed and the target is left as it was.

Symbolic links are followed, as a shell redirection follows them: the link stays
and what it points to receives the bytes.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

STDOUT = "-"
# /dev/stdout leads to /proc/self/fd/1; /dev/fd is a link to /proc/self/fd.
_FD_LINK = re.compile(r"/(?:dev/fd|proc/(?:self|thread-self|(?P<pid>\d+))/fd)/(?P<fd>\d+)")


def _inherited_fd(path: str | os.PathLike[str]) -> int | None:
    """The descriptor of ours that `path` names (/dev/stdout, /dev/fd/3,
    /proc/self/fd/1), following links hop by hop; None for any other path."""
    hop = os.path.abspath(path)
    for _ in range(40):  # the kernel's limit on links followed
        named = _FD_LINK.fullmatch(hop)
        if named and named["pid"] in (None, str(os.getpid())):
            return int(named["fd"])
        if not os.path.islink(hop):
            return None
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))
    return None


def is_stdout(path: str | os.PathLike[str]) -> bool:
    """`-`, or a name for our standard output such as /dev/stdout."""
    return os.fspath(path) == STDOUT or _inherited_fd(path) == 1


@contextlib.contextmanager
def open_output(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary handle whose bytes reach `path` by the rule above.

    Leaving the block normally commits the write; an exception inside it (a
    failed check, a broken stream, Ctrl-C) leaves a regular target untouched.
    Bytes already written to standard output, a pipe or a device stay written.
    """
    if is_stdout(path):
        out = sys.stdout.buffer
        yield out
        out.flush()
        return
    inherited = _inherited_fd(path)
    if inherited is not None:
        # The descriptor itself, not a reopening: its offset stays shared with
        # the shell's, so `3>>log` appends and `{ a; b; } 3>f` keeps both.
        with open(os.dup(inherited), "wb") as handle:
            yield handle
        return
    try:
        seen: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        seen = None
    if seen is not None and stat.S_ISDIR(seen.st_mode):
        raise IsADirectoryError(f"{os.fspath(path)}: is a directory, not a file")
    if seen is not None and not stat.S_ISREG(seen.st_mode):
        # No O_CREAT and no O_TRUNC: a device or FIFO is written, never made or cut.
        with open(os.open(path, os.O_WRONLY), "wb") as handle:
            yield handle
        return
    with _replacing(Path(os.path.realpath(path)), seen) as handle:
        yield handle


@contextlib.contextmanager
def _replacing(target: Path, seen: os.stat_result | None) -> Iterator[BinaryIO]:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f"{target.name}.{secrets.token_hex(4)}.partial")
    # O_EXCL: never write through a name someone else placed; 0o666 less the
    # umask, as a plain open would create it.
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with open(fd, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if seen is not None:
            # Replacing a file keeps its permission bits (the owner becomes ours).
            os.chmod(partial, stat.S_IMODE(seen.st_mode))
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_output(path: str | os.PathLike[str], data: bytes) -> None:
    """`data` to `path`, by the rule of `open_output`."""
    with open_output(path) as handle:
        handle.write(data)
