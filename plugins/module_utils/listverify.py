# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The verification pipeline for signed image lists.

Checks, in order (each named after what it protects):
  signature    parse with size limits, exactly one signer, chain to a trust anchor, valid now,
               not revoked, digest not legacy (smime.verify_detached)
  schema       the signed payload is a well-formed HEPiX list within the hard limits
  identity     signer DN = hv:dn and signer issuer = hv:ca (compared as X.509 names, not strings)
  endorsement  the signer is a trusted endorser, its certificate chains through the endorser's pinned
               CA certificate, it is the endorser the site subscribed this source from, and the source
               is one of the endorser's catalogues (the list's own hv:uri proves nothing)
  subscription the list UUID is the subscribed one
  freshness    created <= now <= expires
  rollback     hv:version not lower than the last accepted one of this (endorser, list UUID); same
               version with other bytes refused
A verdict carries every reason found; the state is updated only when the verdict is valid.
"""

from __future__ import annotations

import hashlib
import time

from ansible_collections.vmic.fleet.plugins.module_utils.errors import TrustError
from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import ImageList, ImageListError, compare_versions, parse_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.smime import Verdict, verify_detached, verify_endorser_binding

# Clocks on hypervisors drift a little; a list created a few minutes "in the future" is not an attack.
CLOCK_SKEW_SECONDS = 300


class ListVerdict(Verdict):
    """The outcome of verifying one image list: the object policy and the sync planner work on.

    ``image_list`` is the parsed :class:`imagelist.ImageList` (None when the list could not be read);
    ``images`` its :class:`imagelist.Image` objects. ``subscription`` is the site's subscription the list
    was fetched for (image_sync sets it), so that a refused list still names whose images it covers.
    """

    def __init__(self, source):
        super(ListVerdict, self).__init__(source)
        self.image_list = None
        self.subscription = None
        self.signature = None        # the smime.SignatureVerdict the signer fields come from
        self.endorser = None
        self.revoked = False         # definite: the subscribed endorser's revoked certificate signed this list
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

    @property
    def images(self):
        """The list's images (empty when it could not be read)."""
        return self.image_list.images if self.image_list is not None else []

    @property
    def identifier(self):
        """The list UUID (None when it could not be read)."""
        return self.image_list.identifier if self.image_list is not None else None

    @property
    def version(self):
        """The list's hv:version (None when it could not be read)."""
        return self.image_list.version if self.image_list is not None else None

    @classmethod
    def unreadable(cls, source, reason):
        """The verdict on a list that could not even be fetched or read (``reason`` names it already)."""
        verdict = cls(source)
        verdict.reasons.append(reason)
        return verdict

    def to_result(self):
        """Plain data for a module result."""
        result = self.to_dict()
        result.update({
            "signer_dn": self.signer_dn,
            "issuer_dn": self.issuer_dn,
            "digest": self.digest,
            "endorser": self.endorser,
            "revoked": self.revoked,
            "sha256": self.sha256,
            "expired_images": list(self.expired_images),
            "previous_version": self.previous_version,
            "metadata": None,
            "images": [],
        })
        if self.image_list is not None:
            result["metadata"] = self.image_list.metadata()
            result["images"] = [image.to_dict() for image in self.image_list.images]
        return result


def from_results(results):
    """imagelist_verify results, read back into verdicts (the module boundary of image_policy).

    Only valid results carry images on; each is rebuilt as an :class:`imagelist.ImageList` from its
    metadata and images, so that policy works on the same objects as on a host.
    """
    verdicts = []
    for index, result in enumerate(results or [], 1):
        where = "lists[%d]" % index
        if not isinstance(result, dict):
            raise ImageListError("%s: not a result of imagelist_verify but %s" % (where, type(result).__name__))
        verdict = ListVerdict(result.get("source") or where)
        verdict.reasons = list(result.get("reasons") or [])
        verdict.revoked = bool(result.get("revoked"))
        if result.get("valid") is True:
            body = dict((key, value) for key, value in (result.get("metadata") or {}).items() if key != "legacy_unwrapped")
            body["hv:images"] = result.get("images") or []
            try:
                verdict.image_list = ImageList({"hv:imagelist": body}, verdict.source)
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise ImageListError("%s: not a verified list as imagelist_verify returns it (%s %s)" % (where, type(exc).__name__, exc))
            verdict.valid = True
            verdict.endorser = result.get("endorser")
            verdict.expired_images = list(result.get("expired_images") or [])
        verdicts.append(verdict)
    return verdicts


def _check_identity(verdict, signature, image_list):
    """The signer is the list's hv:dn and its issuer the list's hv:ca (names compared as X.509 names)."""
    endorsers = image_list.endorsers
    signer_name, issuer_name = signature.signer_name, signature.issuer_name
    if not any(e.dn_name == signer_name for e in endorsers):
        verdict.refuse("signer %s is not hv:dn %s" % (signature.signer_dn, " or ".join(e.dn for e in endorsers)))
    elif not any(e.dn_name == signer_name and e.ca_name == issuer_name for e in endorsers):
        verdict.refuse("signer issuer %s is not hv:ca %s" % (signature.issuer_dn, " or ".join(e.ca for e in endorsers)))


def _check_endorsement(verdict, signature, registry, trust, url, expected_endorser):
    """The signer is a trusted endorser, bound to its pinned CA certificate, the subscribed one, for this source.

    Returns the endorser, or None (with reasons) when the signer is not one the site trusts here. What a
    list says about itself (``hv:uri``) proves nothing: only the site's configuration binds a source URL
    to an endorser.
    """
    endorser = registry.match(signature.signer_name, signature.issuer_name)
    if endorser is None:
        verdict.refuse("signer %s (issuer %s) is not a trusted endorser" % (signature.signer_dn, signature.issuer_dn))
        return None
    binding = verify_endorser_binding(signature, endorser, trust)
    for reason in binding:
        verdict.refuse(reason)
    if expected_endorser is not None and endorser.name != expected_endorser:
        verdict.refuse("signed by endorser %s, not by %s, the endorser this list is subscribed from" % (endorser.name, expected_endorser))
        return None
    if endorser.urls and url not in endorser.urls:
        verdict.refuse("endorser %s is not trusted for this catalogue (its catalogues: %s)" % (endorser.name, ", ".join(endorser.urls)))
        return None
    return None if binding else endorser


def _definitely_revoked(signature, source, trust, registry, state, expected_endorser, expected_identifier):
    """Whether a refused list is the definite signal that the subscribed endorser's certificate is revoked.

    The site's CRLs revoking the certificate an envelope names proves nothing by itself: a mirror can
    serve any revoked certificate, or an old list of the endorser signed before a re-key. It is a
    signal only when the revoked certificate's key really signed this content, the signer is the
    subscribed endorser (bound to its pinned CA), the content is the subscribed list, and it is not
    older than the version this host last accepted from that endorser (not a replay).
    """
    if not signature.revoked or signature.revoked_content is None or expected_endorser is None:
        return False
    endorser = registry.match(signature.signer_name, signature.issuer_name)
    if endorser is None or endorser.name != expected_endorser or verify_endorser_binding(signature, endorser, trust):
        return False
    try:
        image_list = parse_image_list(signature.revoked_content, source)
    except ImageListError:
        return False
    if expected_identifier is not None and image_list.identifier != expected_identifier.lower():
        return False
    if state is not None:
        previous = state.get(endorser.name, image_list.identifier, source)
        if previous is not None and compare_versions(image_list.version, previous["version"]) < 0:
            return False
    return True


def verify_image_list(envelope, source, trust, registry, state=None, now=None, expected_identifier=None,
                      allow_legacy_digests=False, record=True, max_bytes=None, expected_endorser=None, subscribed_url=None):
    """Verify a signed image list (bytes of the S/MIME envelope) and return a :class:`ListVerdict`.

    ``trust`` is a truststore.TrustStore, ``registry`` a truststore.EndorserRegistry, ``state`` a
    liststate.ListStateStore or None. ``expected_endorser`` (an endorser name of the registry) and
    ``expected_identifier`` (the list UUID) bind the list to the site's subscription: a list signed by
    any other endorser, or carrying another UUID, is refused. ``subscribed_url`` is the URL the site
    subscribes to when ``source`` is a local copy of it (the publisher checking a list before it is
    served); the endorser's catalogue URLs are checked against it. The version state is kept per
    (endorser, list UUID), so one endorser's lists never touch another's. ``record=False`` (check mode)
    never writes state.
    """
    verdict = ListVerdict(source)
    now = time.time() if now is None else now
    kwargs = {"allow_legacy_digests": allow_legacy_digests}
    if max_bytes is not None:
        kwargs["max_bytes"] = max_bytes
    if expected_endorser is not None and expected_endorser not in registry:
        raise TrustError("image list %s: subscribed from endorser %s, which is not in the endorser list (known: %s)"
                         % (source, expected_endorser, ", ".join(registry.names()) or "none"))
    signature = verify_detached(envelope, trust, source, **kwargs)
    verdict.signature = signature
    if not signature.valid:
        verdict.reasons.extend(signature.reasons)
        verdict.revoked = _definitely_revoked(signature, source, trust, registry, state, expected_endorser, expected_identifier)
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

    _check_identity(verdict, signature, image_list)
    endorser = _check_endorsement(verdict, signature, registry, trust, subscribed_url or source, expected_endorser)
    if endorser is not None:
        verdict.endorser = endorser.name

    if expected_identifier is not None and image_list.identifier != expected_identifier.lower():
        verdict.refuse("dc:identifier %s is not the subscribed list %s (list swapped)" % (image_list.identifier, expected_identifier.lower()))

    if image_list.created_epoch > now + CLOCK_SKEW_SECONDS:
        verdict.refuse("created %s, in the future" % image_list.created)
    if image_list.expires_epoch < now:
        verdict.refuse("expired %s" % image_list.expires)
    if image_list.expires_epoch < image_list.created_epoch:
        verdict.refuse("expires %s before it was created %s" % (image_list.expires, image_list.created))

    if state is not None and endorser is not None:
        previous = state.get(endorser.name, image_list.identifier, source)
        verdict.previous_version = previous["version"] if previous else None
        rollback = state.rollback_reason(endorser.name, image_list.identifier, image_list.version, verdict.sha256, source)
        if rollback:
            verdict.refuse(rollback)

    verdict.expired_images = [image.identifier for image in image_list.images if image.expired(now)]
    verdict.valid = not verdict.reasons
    if verdict.valid and state is not None:
        if record:
            verdict.state_changed = state.record(endorser.name, image_list.identifier, image_list.version, verdict.sha256, source)
        else:
            verdict.state_changed = state.would_change(endorser.name, image_list.identifier, image_list.version, verdict.sha256)
    return verdict
