# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verification pipeline for signed image lists.

Checks, in order (each named after what it protects):
  signature    parse with size limits, exactly one signer, chain to a trust anchor, valid now,
               not revoked, digest not legacy (smime.verify_detached)
  schema       the signed payload is a well-formed HEPiX list within the hard limits
  identity     signer DN = hv:dn and signer issuer = hv:ca
  endorsement  the signer is a trusted endorser, and trusted for this catalogue
  subscription the list UUID is the subscribed one
  freshness    created <= now <= expires
  rollback     hv:version not lower than the last accepted one; same version with other bytes refused
A verdict carries every reason found; the state is updated only when the verdict is valid.
"""

from __future__ import annotations

import hashlib
import time

from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import ImageListError, parse_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.smime import verify_detached

# Clocks on hypervisors drift a little; a list created a few minutes "in the future" is not an attack.
CLOCK_SKEW_SECONDS = 300


class ListVerdict(object):
    """The outcome of verifying one image list."""

    def __init__(self, source):
        self.source = source
        self.valid = False
        self.reasons = []
        self.image_list = None
        self.signature = None        # the smime.SignatureVerdict the signer fields come from
        self.endorser = None
        self.sha256 = None
        self.state_changed = False
        self.previous_version = None
        self.expired_images = []

    @property
    def signer_dn(self):
        """Canonical subject DN of the signer (unverified when the signature is not valid)."""
        return self.signature.signer_dn if self.signature else None

    @property
    def issuer_dn(self):
        """Canonical issuer DN of the signer."""
        return self.signature.issuer_dn if self.signature else None

    @property
    def digest(self):
        """Digest algorithm of the signature."""
        return self.signature.digest if self.signature else None

    def refuse(self, reason):
        """Add a reason, prefixed with the list's source."""
        self.reasons.append("image list %s: %s" % (self.source, reason))

    def to_result(self):
        """Plain data for a module result."""
        result = {
            "source": self.source,
            "valid": self.valid,
            "reasons": list(self.reasons),
            "signer_dn": self.signer_dn,
            "issuer_dn": self.issuer_dn,
            "digest": self.digest,
            "endorser": self.endorser,
            "sha256": self.sha256,
            "expired_images": list(self.expired_images),
            "previous_version": self.previous_version,
            "metadata": None,
            "images": [],
        }
        if self.image_list is not None:
            result["metadata"] = self.image_list.metadata()
            result["images"] = [image.to_dict() for image in self.image_list.images]
        return result


def _endorser_trusted_for(endorser, source, image_list):
    """An endorser with registered catalogue URLs signs only those catalogues."""
    if not endorser.urls:
        return True
    return source in endorser.urls or (image_list.uri is not None and image_list.uri in endorser.urls)


def verify_image_list(envelope, source, trust, registry, state=None, now=None, expected_identifier=None,
                      allow_legacy_digests=False, record=True, max_bytes=None):
    """Verify a signed image list (bytes of the S/MIME envelope) and return a :class:`ListVerdict`.

    ``trust`` is a truststore.TrustStore, ``registry`` a truststore.EndorserRegistry, ``state`` a
    liststate.ListStateStore or None. ``record=False`` (check mode) never writes state.
    """
    verdict = ListVerdict(source)
    now = time.time() if now is None else now
    kwargs = {"allow_legacy_digests": allow_legacy_digests}
    if max_bytes is not None:
        kwargs["max_bytes"] = max_bytes
    signature = verify_detached(envelope, trust, source, **kwargs)
    verdict.signature = signature
    if not signature.valid:
        verdict.reasons.extend(signature.reasons)
        return verdict
    content = signature.content
    verdict.sha256 = hashlib.sha256(content).hexdigest()

    try:
        image_list = parse_image_list(content, source)
    except ImageListError as exc:
        for reason in getattr(exc, "reasons", [str(exc)]):
            verdict.refuse(reason)
        return verdict
    verdict.image_list = image_list

    if not any(e.dn == signature.signer_dn for e in image_list.endorsers):
        verdict.refuse("signer %s is not hv:dn %s" % (signature.signer_dn, " or ".join(e.dn for e in image_list.endorsers)))
    elif not any(e.dn == signature.signer_dn and e.ca == signature.issuer_dn for e in image_list.endorsers):
        verdict.refuse("signer issuer %s is not hv:ca %s" % (signature.issuer_dn, " or ".join(e.ca for e in image_list.endorsers)))

    endorser = registry.match(signature.signer_dn, signature.issuer_dn)
    if endorser is None:
        verdict.refuse("signer %s (issuer %s) is not a trusted endorser" % (signature.signer_dn, signature.issuer_dn))
    elif not _endorser_trusted_for(endorser, source, image_list):
        verdict.refuse("endorser %s is not trusted for this catalogue (hv:uri %s; catalogues: %s)"
                       % (endorser.name, image_list.uri, ", ".join(endorser.urls)))
    else:
        verdict.endorser = endorser.name

    if expected_identifier is not None and image_list.identifier != expected_identifier.lower():
        verdict.refuse("dc:identifier %s is not the subscribed list %s (list swapped)" % (image_list.identifier, expected_identifier.lower()))

    if image_list.created_epoch > now + CLOCK_SKEW_SECONDS:
        verdict.refuse("created %s, in the future" % image_list.created)
    if image_list.expires_epoch < now:
        verdict.refuse("expired %s" % image_list.expires)
    if image_list.expires_epoch < image_list.created_epoch:
        verdict.refuse("expires %s before it was created %s" % (image_list.expires, image_list.created))

    if state is not None:
        previous = state.get(image_list.identifier)
        verdict.previous_version = previous["version"] if previous else None
        rollback = state.rollback_reason(image_list.identifier, image_list.version, verdict.sha256)
        if rollback:
            verdict.refuse(rollback)

    verdict.expired_images = [image.identifier for image in image_list.images if image.expired(now)]
    verdict.valid = not verdict.reasons
    if verdict.valid and state is not None:
        if record:
            verdict.state_changed = state.record(image_list.identifier, image_list.version, verdict.sha256, source)
        else:
            before = state.get(image_list.identifier)
            verdict.state_changed = before is None or (before["version"], before["sha256"]) != (image_list.version, verdict.sha256)
    return verdict
