"""A guard for tests that write to `/dev/null` on purpose.

Such a test exists because a regression once renamed a regular file over the
null device when run as root (issue 20). Should that come back, the guard puts
the device back, so one failing test does not break every process on the
machine after it; the test still fails on what it saw.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator

DEV_NULL = "/dev/null"


def is_dev_null() -> bool:
    """`/dev/null` is still the character device it was at boot (major 1, minor 3)."""
    seen = os.stat(DEV_NULL, follow_symlinks=False)
    return stat.S_ISCHR(seen.st_mode) and seen.st_rdev == os.makedev(1, 3)


@contextlib.contextmanager
def dev_null_restored() -> Iterator[None]:
    """Run a block that writes to `/dev/null`; if it replaced the device, recreate it."""
    try:
        yield
    finally:
        if not is_dev_null() and os.geteuid() == 0:
            os.unlink(DEV_NULL)
            os.mknod(DEV_NULL, stat.S_IFCHR | 0o666, os.makedev(1, 3))
            os.chmod(DEV_NULL, 0o666)
