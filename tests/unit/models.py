"""Verdicts of the image-list model for tests of the logic after verification (policy, sync plan).

They are what listverify.verify_image_list returns for a valid list (python-tuf's tests drive their
logic the same way, from the repository simulator's objects); the verification itself is tested
against real openssl in test_listverify.py and test_subscription.py.
"""

from ansible_collections.vmic.fleet.plugins.module_utils.imagelist import ImageList
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import ListVerdict

DN = "/DC=test/CN=endorser"
CA = "/DC=test/CN=ca"


def list_document(list_id, images, version="1"):
    """A list document as parse_image_list reads it."""
    return {"hv:imagelist": {
        "dc:identifier": list_id, "dc:date:created": "2026-01-01T00:00:00Z", "dc:date:expires": "2099-01-01T00:00:00Z",
        "hv:version": version, "hv:endorser": {"hv:x509": {"hv:dn": DN, "hv:ca": CA}}, "hv:images": [{"hv:image": i} for i in images]}}


def verdict(endorser, list_id, images, valid=True, revoked=False, reasons=(), expired=(), source=None, subscribed=True):
    """A ListVerdict: valid with the list's images, or refused with ``reasons`` (and no list)."""
    source = source or "https://repo.test/%s.list" % endorser
    result = ListVerdict(source)
    result.valid = valid
    result.revoked = revoked
    result.reasons = list(reasons)
    if valid:
        result.image_list = ImageList(list_document(list_id, images), source)
        result.endorser = endorser
        result.expired_images = list(expired)
    if subscribed:
        result.subscription = {"src": source, "endorser": endorser, "identifier": list_id}
    return result
