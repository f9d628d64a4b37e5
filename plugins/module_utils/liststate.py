# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host last accepted, per image list UUID, so that rollback and replays are refused.

One JSON file per list (``<uuid>.json``) in a state directory, written atomically. A list is
recorded only after every check has passed; a refused list never changes the stored state.
"""

from __future__ import annotations

import hmac
import json
import os
import re
import time

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import compare_versions

MAX_STATE_BYTES = 64 * 1024
_UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


class StateError(VmicError):
    """The state directory or a state file is unusable."""


class ListStateStore(object):
    """Last accepted ``hv:version`` and sha256 of the signed bytes, per list UUID."""

    def __init__(self, state_dir):
        self.state_dir = state_dir

    def _path(self, identifier):
        if not _UUID_RE.match(identifier):
            raise StateError("list identifier %r is not a lower-case UUID" % (identifier,))
        return os.path.join(self.state_dir, "%s.json" % identifier)

    def get(self, identifier):
        """The stored record for a list, or None when none was accepted yet."""
        path = self._path(identifier)
        if not os.path.exists(path):
            return None
        try:
            record = json.loads(read_limited(path, MAX_STATE_BYTES).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, VmicError) as exc:
            raise StateError("state file %s is unreadable: %s" % (path, exc))
        if not isinstance(record, dict) or not isinstance(record.get("version"), str) or not isinstance(record.get("sha256"), str):
            raise StateError("state file %s lacks version or sha256" % path)
        return record

    def rollback_reason(self, identifier, version, sha256):
        """Why accepting ``version`` with payload digest ``sha256`` would be a rollback or replay, or None."""
        record = self.get(identifier)
        if record is None:
            return None
        order = compare_versions(version, record["version"])
        if order < 0:
            return "hv:version %s is lower than %s, accepted on %s (rollback)" % (version, record["version"], record.get("accepted_at", "?"))
        if order == 0 and not hmac.compare_digest(sha256, record["sha256"]):
            return "hv:version %s was accepted before with different content (same version, different bytes)" % version
        return None

    def record(self, identifier, version, sha256, source):
        """Store a newly accepted list; returns True when the record changed."""
        before = self.get(identifier)
        if before is not None and before["version"] == version and before["sha256"] == sha256:
            return False
        if not os.path.isdir(self.state_dir):
            os.makedirs(self.state_dir, mode=0o750)
        record = {
            "identifier": identifier,
            "version": version,
            "sha256": sha256,
            "source": source,
            "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_atomic(self._path(identifier), (json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8"), 0o640)
        return True
