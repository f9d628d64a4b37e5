# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes and size-limited reads.

Nothing half-written is ever visible: data goes to a temporary file in the target
directory, is fsynced, then renamed over the target, and the directory is fsynced.
"""

from __future__ import annotations

import errno
import os
import tempfile

from ansible_collections.vmic.fleet.plugins.module_utils.errors import LimitError, VmicError


class AtomicWriteError(OSError):
    """An atomic write failed; the message names the destination (never the temporary file)."""

    def __str__(self):
        return str(self.strerror)


def fsync_dir(path):
    """fsync a directory so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def require_directory(path):
    """The directory ``path`` would be written in; AtomicWriteError naming ``path`` when it does not exist."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise AtomicWriteError(errno.ENOENT, "cannot write %s: directory %s does not exist" % (path, directory))
    return directory


def write_atomic(path, data, mode=0o644):
    """Write ``data`` (bytes) to ``path`` atomically with permissions ``mode``."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    except OSError as exc:
        require_directory(path)
        raise AtomicWriteError(exc.errno, "cannot write %s: cannot create a file in %s: %s" % (path, directory, exc.strerror or exc))
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise AtomicWriteError(exc.errno, "cannot write %s: %s" % (path, exc.strerror or exc))
        raise
    fsync_dir(directory)


def read_limited(path, max_bytes, what=None):
    """Read at most ``max_bytes`` from ``path``; raise LimitError if the file is larger."""
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LimitError("%s: larger than the limit of %d bytes" % (what or path, max_bytes))
    return data


def read_input(path, max_bytes, what):
    """read_limited for an input the caller names (``what``, e.g. "certificate /x.pem"): a missing or
    unreadable file is a VmicError naming it, not an OSError."""
    try:
        return read_limited(path, max_bytes, what)
    except OSError as exc:
        raise VmicError("%s: %s" % (what, exc.strerror or exc))
