"""The sync plan of one hypervisor: each list judged on its own, images named by (endorser, identifier).

These tests give ``plan_sync`` verdicts as the list verification returns them (tests/unit/models.py, as
in python-tuf's simulator-driven tests) and a real image store on disk; the verification itself is
tested against real openssl in test_listverify.py and test_subscription.py, and the whole path
end to end in tests/swarm/test_image_sync.py.
"""

import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.imagestore import ImageStore
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import engine_owner, plan_sync
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy

from models import verdict

LIST_A = "11111111-1111-4111-8111-111111111111"
LIST_B = "22222222-2222-4222-8222-222222222222"
U1 = "aaaaaaaa-0000-4000-8000-000000000001"
U2 = "aaaaaaaa-0000-4000-8000-000000000002"
SHA = {U1: "1" * 128, U2: "2" * 128}
APPROVE_ALL = Policy({"rules": [{"action": "approve", "endorser": ["cern", "desy"]}]})


def image(uuid, version="1", title="img"):
    return {"dc:identifier": uuid, "dc:title": title, "hv:version": version, "hv:size": 4,
            "sl:checksum:sha512": SHA[uuid], "hv:uri": "https://repo.test/images/%s.img" % uuid[-1]}


def hold(store, uuid, version, endorser, list_id):
    """Commit a 4-byte image file to the store as image_sync would."""
    final = store.final_dir(uuid, version)
    os.makedirs(final)
    with open(os.path.join(final, "disk.img"), "wb") as handle:
        handle.write(b"data")
    store.commit(uuid, version, "disk.img", {"sha512": SHA[uuid], "size": 4, "list": list_id, "endorser": endorser, "title": "held"})


def held_pairs(items):
    return sorted((s.identifier, s.version) for s in items)


def test_one_refused_list_blocks_every_update_refused(tmp_path):
    """A refused list keeps its images exactly as they are; a withdrawal in another, valid list still applies."""
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    hold(store, U2, "1", "desy", LIST_B)
    verdicts = [verdict("cern", LIST_A, [], valid=False, reasons=["image list https://repo.test/cern.list: expired 2026-01-01T00:00:00Z"]),
                verdict("desy", LIST_B, [])]  # desy withdrew U2
    plan = plan_sync(verdicts, APPROVE_ALL, {}, store)
    assert held_pairs(plan.held) == [(U1, "1")]
    assert held_pairs(plan.retire) == [(U2, "1")]
    assert plan.add == [] and plan.keep == []
    assert plan.to_dict()["refused"] == [{"source": "https://repo.test/cern.list", "endorser": "cern", "identifier": LIST_A,
                                          "revoked": False, "reasons": ["image list https://repo.test/cern.list: expired 2026-01-01T00:00:00Z"]}]


def test_revoked_endorser_images_withdrawn(tmp_path):
    """A list whose signer the site's CRLs revoke is a definite signal: its images are retired."""
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    plan = plan_sync([verdict("cern", LIST_A, [], valid=False, revoked=True, reasons=["revoked"])], APPROVE_ALL, {}, store)
    assert held_pairs(plan.retire) == [(U1, "1")] and plan.held == []
    assert plan.to_dict()["refused"][0]["revoked"] is True


def test_identifier_squatting_retire_refused(tmp_path):
    """Another endorser listing a held image's identifier neither retires nor replaces it."""
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    squat = image(U1, version="2", title="impostor")
    squat["sl:checksum:sha512"] = "f" * 128
    verdicts = [verdict("cern", LIST_A, [image(U1)]), verdict("desy", LIST_B, [squat])]
    deny_desy = Policy({"rules": [{"action": "approve", "endorser": "cern"}]})
    plan = plan_sync(verdicts, deny_desy, {}, store)
    assert held_pairs(plan.keep) == [(U1, "1")] and plan.retire == [] and plan.add == []
    # Both approved: the image the site approved before keeps the identifier.
    plan = plan_sync(verdicts, APPROVE_ALL, {}, store, known=["cern/" + U1])
    assert held_pairs(plan.keep) == [(U1, "1")] and plan.retire == [] and plan.add == []


def test_squat_while_owner_list_refused_refused(tmp_path):
    """While the owner's list is refused, another endorser's image with the same identifier is not added over it."""
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    squat = image(U1, version="2", title="impostor")
    verdicts = [verdict("cern", LIST_A, [], valid=False, reasons=["stale CRL"]), verdict("desy", LIST_B, [squat])]
    plan = plan_sync(verdicts, APPROVE_ALL, {}, store)
    assert held_pairs(plan.held) == [(U1, "1")] and plan.add == [] and plan.retire == []
    assert "whose list is refused" in plan.conflicts[0]


def test_unsubscribed_list_images_retired(tmp_path):
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    plan = plan_sync([verdict("desy", LIST_B, [])], APPROVE_ALL, {}, store)
    assert held_pairs(plan.retire) == [(U1, "1")]


def test_new_version_replaces_held_and_diff_shows_it(tmp_path):
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    plan = plan_sync([verdict("cern", LIST_A, [image(U1, version="2")])], APPROVE_ALL, {}, store)
    assert [(p.identifier, p.version, p.endorser) for p in plan.add] == [(U1, "2", "cern")]
    assert held_pairs(plan.retire) == [(U1, "1")]
    diff = plan.diff()
    assert "%s 1 (held)" % U1 in diff["before"] and "%s 2 (img)" % U1 in diff["after"]


def test_withdrawn_download_planned_for_discard(tmp_path):
    """Check mode predicts it: a download no image to add uses is discarded at activation."""
    store = ImageStore(str(tmp_path / "images"))
    store.ensure()
    os.makedirs(store.partial_dir(U2, "1"))
    plan = plan_sync([verdict("cern", LIST_A, [image(U1)])], APPROVE_ALL, {}, store)
    assert plan.to_dict()["discard"] == ["%s 1" % U2]
    assert [(p.identifier, p.version) for p in plan.add] == [(U1, "1")]


def test_identifier_squatting_without_approved_set_retire_refused(tmp_path):
    """No approved set on record: the image this host holds still keeps its identifier against a newcomer."""
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    squat = image(U1, version="2", title="impostor")
    verdicts = [verdict("cern", LIST_A, [image(U1)]), verdict("desy", LIST_B, [squat])]
    plan = plan_sync(verdicts, APPROVE_ALL, {}, store, known=())
    assert held_pairs(plan.keep) == [(U1, "1")] and plan.retire == [] and plan.add == []


def test_rtorrent_without_user_refused():
    """rtorrent's images must be taken from its user and hashed again: a spec without that user is refused."""
    for spec in ({"kind": "rtorrent", "socket": "/run/rtorrent/rpc.sock"}, {"kind": "rtorrent", "user": "root"}):
        with pytest.raises(EngineError, match="give engine.user"):
            engine_owner(spec)
    assert engine_owner({"kind": "libtorrent"}) is None


def test_same_identifier_and_version_from_new_endorser_deferred(tmp_path):
    """cern withdrew U1 v1 and desy lists its own U1 v1: the held one is retired first, desy's comes next run."""
    store = ImageStore(str(tmp_path / "images"))
    hold(store, U1, "1", "cern", LIST_A)
    theirs = image(U1)
    theirs["sl:checksum:sha512"] = "f" * 128
    plan = plan_sync([verdict("cern", LIST_A, []), verdict("desy", LIST_B, [theirs])], APPROVE_ALL, {}, store)
    assert held_pairs(plan.retire) == [(U1, "1")] and plan.add == []
    assert "deferred to the next run" in plan.conflicts[0]
