# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a host last accepted, per (endorser, image list UUID), so that rollback and replays are refused.

One JSON file per endorser and list (``<endorser>/<uuid>.json``) in a state directory, written
atomically. A list is recorded only after every check has passed; a refused list never changes the
stored state. The endorser is the site's name for the verified signer (its registry entry, bound to
the signer's certificate and issuing CA), so a list signed by one endorser can never change the state
of another endorser's list, even when it carries the same list UUID: a foreign list claiming
another's UUID with a huge version cannot freeze that catalogue.

State files of earlier releases (``<uuid>.json`` directly in the state directory) were not bound to an
endorser. Until a list of the subscription is accepted again, such a file is still the floor for the
list fetched from the same source it records, so an upgrade opens no window for a replayed older list.
A catalogue frozen by the earlier release's flaw shows as refused (rollback): check it, then remove
that file.
"""

from __future__ import annotations

import hmac
import json
import os
import time

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import is_endorser_name, is_lower_uuid
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import compare_versions

MAX_STATE_BYTES = 64 * 1024


class StateError(VmicError):
    """The state directory or a state file is unusable."""


class ListStateStore(object):
    """Last accepted ``hv:version`` and sha256 of the signed bytes, per (endorser, list UUID)."""

    def __init__(self, state_dir):
        self.state_dir = state_dir

    def _path(self, endorser, identifier):
        if not is_endorser_name(endorser):
            raise StateError("endorser name %r cannot key list state" % (endorser,))
        if not is_lower_uuid(identifier):
            raise StateError("list identifier %r is not a lower-case UUID" % (identifier,))
        return os.path.join(self.state_dir, endorser, "%s.json" % identifier)

    def get(self, endorser, identifier, source=None):
        """The stored record for a list of ``endorser``, or None when none was accepted yet.

        With ``source``, an earlier release's record of the same list UUID fetched from that source stands
        in until the first record of this release is written.
        """
        record = self._read(self._path(endorser, identifier))
        if record is None and source is not None:
            legacy = self._read(os.path.join(self.state_dir, "%s.json" % identifier))
            if legacy is not None and legacy.get("source") == source:
                return legacy
        return record

    def _read(self, path):
        if not os.path.exists(path):
            return None
        try:
            record = json.loads(read_limited(path, MAX_STATE_BYTES).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, VmicError) as exc:
            raise StateError("state file %s is unreadable: %s" % (path, exc))
        if not isinstance(record, dict) or not isinstance(record.get("version"), str) or not isinstance(record.get("sha256"), str):
            raise StateError("state file %s lacks version or sha256" % path)
        return record

    def rollback_reason(self, endorser, identifier, version, sha256, source=None):
        """Why accepting ``version`` with payload digest ``sha256`` would be a rollback or replay, or None."""
        record = self.get(endorser, identifier, source)
        if record is None:
            return None
        order = compare_versions(version, record["version"])
        if order < 0:
            return "hv:version %s is lower than %s, accepted on %s (rollback)" % (version, record["version"], record.get("accepted_at", "?"))
        if order == 0 and not hmac.compare_digest(sha256, record["sha256"]):
            return "hv:version %s was accepted before with different content (same version, different bytes)" % version
        return None

    def would_change(self, endorser, identifier, version, sha256):
        """True when :meth:`record` would write (check mode asks this)."""
        before = self.get(endorser, identifier)
        return before is None or (before["version"], before["sha256"]) != (version, sha256)

    def record(self, endorser, identifier, version, sha256, source):
        """Store a newly accepted list of ``endorser``; returns True when the record changed."""
        if not self.would_change(endorser, identifier, version, sha256):
            return False
        path = self._path(endorser, identifier)
        if not os.path.isdir(os.path.dirname(path)):
            os.makedirs(os.path.dirname(path), mode=0o750)
        record = {
            "endorser": endorser,
            "identifier": identifier,
            "version": version,
            "sha256": sha256,
            "source": source,
            "accepted_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        write_atomic(path, (json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8"), 0o640)
        return True
