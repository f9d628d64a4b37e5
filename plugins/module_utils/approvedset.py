# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The site's approved set: which images the site approved at its last publication.

``publish.yml`` (module ``image_policy`` with a ``state_dir``) writes ``approved.json`` on the
controller after applying the policy; ``rollout.yml`` and ``status.yml`` read the same file and pass
its identities to every hypervisor as ``known_images``. That is the single meaning of "approved
before" for ``new_images: refuse``: a fresh hypervisor decides exactly as an old one.

File format: ``{"approved": {"<endorser>/<image uuid>": {version, sha512, title, list, endorser}}}``.
Keys of earlier releases (a bare image UUID) are read as ``*/<uuid>``: that UUID from any endorser
counts as approved before, as it did then; the next publication writes the set in the new form.
"""

from __future__ import annotations

import json
import os

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import read_limited, write_atomic
from ansible_collections.vmic.fleet.plugins.module_utils.errors import PolicyError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import IDENTITY_RE, UUID_LOWER_RE
from ansible_collections.vmic.fleet.plugins.module_utils.policy import ANY_ENDORSER, evaluate

STATE_FILE = "approved.json"
MAX_STATE_BYTES = 16 * 1024 * 1024
MAX_KNOWN = 100000


def check_known(items):
    """Validate ``known_images`` as a module option gives them; returns a frozenset of identities.

    The keys of approved.json are given as they are: a bare UUID (an earlier release's key) becomes ``*/<uuid>``.
    """
    if items is None:
        return frozenset()
    if not isinstance(items, (list, tuple, set, frozenset)):
        raise PolicyError("known_images must be a list of endorser/uuid strings, got %s" % type(items).__name__)
    if len(items) > MAX_KNOWN:
        raise PolicyError("known_images: %d entries, more than the limit of %d" % (len(items), MAX_KNOWN))
    known = set()
    for item in items:
        if isinstance(item, str) and UUID_LOWER_RE.match(item):
            item = "%s/%s" % (ANY_ENDORSER, item)
        if not isinstance(item, str) or not IDENTITY_RE.match(item):
            raise PolicyError("known_images: %r is not <endorser>/<lower-case image uuid>" % (item,))
        known.add(item)
    return frozenset(known)


class ApprovedSetStore(object):
    """``approved.json`` in a state directory (None: no state, nothing approved before)."""

    def __init__(self, state_dir):
        self.state_dir = state_dir
        self.path = os.path.join(state_dir, STATE_FILE) if state_dir else None

    def load(self):
        """identity -> record of the last publication (empty when there was none)."""
        if not self.path or not os.path.exists(self.path):
            return {}
        try:
            data = json.loads(read_limited(self.path, MAX_STATE_BYTES).decode("utf-8"))
        except (ValueError, UnicodeDecodeError, VmicError) as exc:
            raise VmicError("approved-set state %s is unreadable: %s" % (self.path, exc))
        if not isinstance(data, dict) or not isinstance(data.get("approved"), dict):
            raise VmicError("approved-set state %s lacks an approved mapping" % self.path)
        approved = {}
        for key, value in data["approved"].items():
            if not isinstance(value, dict):
                continue
            if UUID_LOWER_RE.match(key):
                key = "%s/%s" % (ANY_ENDORSER, key)
            if IDENTITY_RE.match(key):
                approved[key] = value
        return approved

    def save(self, approved):
        """Write the approved set atomically."""
        if not self.path:
            raise VmicError("approved-set state: no state directory")
        try:
            if not os.path.isdir(self.state_dir):
                os.makedirs(self.state_dir, mode=0o750)
            write_atomic(self.path, (json.dumps({"approved": approved}, sort_keys=True, indent=2) + "\n").encode("utf-8"), 0o640)
        except OSError as exc:
            raise VmicError("approved-set state %s: %s" % (self.path, exc.strerror or exc))


def approved_set(decisions):
    """identity -> record, for the approved decisions."""
    current = {}
    for decision in decisions:
        if not decision.approved:
            continue
        candidate = decision.candidate
        image = candidate.image
        current[candidate.identity] = {
            "version": image.version,
            "sha512": image.sha512,
            "title": image.title,
            "list": candidate.list_identifier,
            "endorser": candidate.endorser,
        }
    return current


def summary(approved):
    """One line per approved image, sorted: the diff text of an approved set."""
    return "".join("%s %s %s\n" % (key, value.get("version"), value.get("title")) for key, value in sorted(approved.items()))


class Approval(object):
    """The site's approval this run, against the approved set of the last run.

    ``decisions`` (policy.evaluate), ``current`` and ``previous`` approved sets, and what changed:
    ``added``/``removed`` identities and ``updated`` ones (other version or bytes).
    """

    def __init__(self, decisions, previous):
        self.decisions = decisions
        self.previous = previous
        self.current = approved_set(decisions)
        both = set(self.current) & set(previous)
        self.added = sorted(set(self.current) - set(previous))
        self.removed = sorted(set(previous) - set(self.current))
        self.updated = sorted(key for key in both if (self.current[key]["version"], self.current[key]["sha512"])
                              != (previous[key].get("version"), previous[key].get("sha512")))

    @property
    def changed(self):
        """True when the approved set differs from the last run's."""
        return bool(self.added or self.removed or self.updated)

    def approved_images(self):
        """The approved images as plain data (policy.Decision.approved_image)."""
        return [decision.approved_image() for decision in self.decisions if decision.approved]

    def diff(self):
        """Ansible's diff of the approved set."""
        return {"before_header": "approved images", "after_header": "approved images",
                "before": summary(self.previous), "after": summary(self.current)}


def approve(policy, verdicts, store, known=()):
    """Apply ``policy`` to verified lists against ``store`` (an ApprovedSetStore): returns an :class:`Approval`.

    "Approved before" is the store's set plus ``known`` (checked identities, see :func:`check_known`).
    Nothing is written: :meth:`ApprovedSetStore.save` the ``current`` set when it changed.
    """
    previous = store.load()
    return Approval(evaluate(policy, verdicts, known=set(previous) | set(known)), previous)
