# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Atomic file writes and size-limited reads.

Nothing half-written is ever visible: data goes to a temporary file in the target
directory, is fsynced, then renamed over the target, and the directory is fsynced.
"""

from __future__ import annotations

import os
import tempfile

from ansible_collections.vmic.fleet.plugins.module_utils.errors import LimitError


def fsync_dir(path):
    """fsync a directory so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, data, mode=0o644):
    """Write ``data`` (bytes) to ``path`` atomically with permissions ``mode``."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(directory)


def read_limited(path, max_bytes, what=None):
    """Read at most ``max_bytes`` from ``path``; raise LimitError if the file is larger."""
    with open(path, "rb") as handle:
        data = handle.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise LimitError("%s: larger than the limit of %d bytes" % (what or path, max_bytes))
    return data
