"""Writing to a path the user chose, without ever replacing what is not ours to replace.

Every command that writes where `-o`/`--out` points goes through `open_output`,
so the rule lives once:

- `-` is standard output;
- a path that exists and is not a regular file (a character device such as
  `/dev/null`, a FIFO, a terminal, `/dev/stdout`) is opened and written in
  place: renaming a file over it would, run as root, replace the device node;
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
import secrets
import stat
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

STDOUT = "-"


def is_stdout(path: str | os.PathLike[str]) -> bool:
    return os.fspath(path) == STDOUT


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
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and stat.S_ISDIR(mode):
        raise IsADirectoryError(f"{os.fspath(path)}: is a directory, not a file")
    if mode is not None and not stat.S_ISREG(mode):
        # No O_CREAT and no O_TRUNC: a device or FIFO is written, never made or cut.
        with open(os.open(target, os.O_WRONLY), "wb") as handle:
            yield handle
        return
    with _replacing(target, mode) as handle:
        yield handle


@contextlib.contextmanager
def _replacing(target: Path, mode: int | None) -> Iterator[BinaryIO]:
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
        if mode is not None:
            # Replacing a file keeps its permission bits (the owner becomes ours).
            os.chmod(partial, stat.S_IMODE(mode))
        os.replace(partial, target)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise


def write_output(path: str | os.PathLike[str], data: bytes) -> None:
    """`data` to `path`, by the rule of `open_output`."""
    with open_output(path) as handle:
        handle.write(data)
