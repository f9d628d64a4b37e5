"""A subscription (source URL, endorser, list UUID) comes from the site, never from the list.

Attacks of one trusted endorser on another's catalogue, against real openssl verification: taking
over a list UUID to freeze it, serving a genuine list of its own at the other's URL, and claiming a
catalogue URL through the list's own hv:uri. Each is refused and leaves the victim's state as it was.
"""

import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import TrustError
from ansible_collections.vmic.fleet.plugins.module_utils.listverify import verify_image_list
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry, TrustStore

from test_listverify import LIST_ID, NOW, SOURCE, document, encode, sign, snapshot

OTHER_LIST = "9c8b7a6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d"
OTHER_SOURCE = "https://repo.test/lists/other.list"


@pytest.fixture()
def site(pki, tmp_path):
    state_dir = tmp_path / "state"
    state_dir.mkdir()
    registry = EndorserRegistry([
        {"name": "victim", "dn": pki.good.dn, "ca": pki.good.issuer_dn, "urls": [SOURCE]},
        {"name": "attacker", "dn": pki.other.dn, "ca": pki.other.issuer_dn},
    ])
    return {"pki": pki, "trust": TrustStore(ca_path=pki.ca_path), "registry": registry,
            "state": ListStateStore(str(state_dir)), "state_dir": state_dir}


def verify(site, envelope, source=SOURCE, **kwargs):
    return verify_image_list(envelope, source, site["trust"], site["registry"], state=site["state"], now=NOW, **kwargs)


def victim_list(site, version="5"):
    return sign(site["pki"].good, encode(document(site["pki"].good, version=version)))


def test_foreign_endorser_list_uuid_freeze_refused(site):
    """The attacker signs a list with the victim's UUID and a huge version, served at the victim's URL."""
    pki = site["pki"]
    forged = sign(pki.other, encode(document(pki.other, version="999999")))
    verdict = verify(site, forged, expected_endorser="victim", expected_identifier=LIST_ID)
    assert not verdict.valid
    assert "signed by endorser attacker, not by victim" in " ".join(verdict.reasons)
    assert snapshot(site["state_dir"]) == {}
    genuine = verify(site, victim_list(site), expected_endorser="victim", expected_identifier=LIST_ID)
    assert genuine.valid, genuine.reasons


def test_foreign_endorser_state_freeze_refused(site):
    """Even where the attacker's list is accepted as its own (no subscription named), it keys its own state only."""
    pki = site["pki"]
    forged = sign(pki.other, encode(document(pki.other, version="999999")))
    accepted = verify(site, forged, source=OTHER_SOURCE)
    assert accepted.valid and accepted.endorser == "attacker", accepted.reasons
    assert sorted(snapshot(site["state_dir"])) == [os.path.join("attacker", LIST_ID + ".json")]
    genuine = verify(site, victim_list(site), expected_endorser="victim", expected_identifier=LIST_ID)
    assert genuine.valid and genuine.previous_version is None, genuine.reasons
    later = verify(site, victim_list(site, version="6"), expected_endorser="victim", expected_identifier=LIST_ID)
    assert later.valid and later.previous_version == "5"


def test_other_endorser_genuine_list_at_subscribed_url_refused(site):
    """A genuine list of the attacker (its own UUID) served at the victim's URL, without a UUID pin."""
    pki = site["pki"]
    own = sign(pki.other, encode(document(pki.other, **{"dc:identifier": OTHER_LIST, "hv:uri": OTHER_SOURCE})))
    verdict = verify(site, own, expected_endorser="victim")
    assert not verdict.valid and "not by victim" in " ".join(verdict.reasons)
    assert snapshot(site["state_dir"]) == {}


def test_hv_uri_self_assertion_refused(site):
    """A list fetched from elsewhere does not become one of the endorser's catalogues by naming one in hv:uri."""
    verdict = verify(site, victim_list(site), source="https://mirror.test/lists/any.list")
    assert not verdict.valid
    assert "not trusted for this catalogue" in " ".join(verdict.reasons)
    assert snapshot(site["state_dir"]) == {}


def test_subscription_to_unknown_endorser_refused(site):
    with pytest.raises(TrustError, match="not in the endorser list"):
        verify(site, victim_list(site), expected_endorser="nobody")


def revoked_site(site, current=None):
    """A site subscribed to the endorser whose certificate pki.revoked the site's CRLs revoke."""
    pki = site["pki"]
    site["registry"] = EndorserRegistry([{"name": "victim", "dn": pki.revoked.dn, "ca": pki.revoked.issuer_dn}])
    return site


def test_revoked_endorser_list_is_a_definite_signal(site):
    """The subscribed endorser's own revoked certificate signed the subscribed list: its images are withdrawn."""
    pki = revoked_site(site)["pki"]
    verdict = verify(site, sign(pki.revoked, encode(document(pki.revoked)), check=False), expected_endorser="victim",
                     expected_identifier=LIST_ID)
    assert not verdict.valid and verdict.revoked
    assert "revoked" in " ".join(verdict.reasons)


def test_forged_revocation_signal_other_certificate_refused(site):
    """A mirror serves a list signed by some other revoked certificate: refused, but no withdrawal of the victim's images."""
    pki = site["pki"]
    verdict = verify(site, sign(pki.revoked, encode(document(pki.revoked)), check=False), expected_endorser="victim",
                     expected_identifier=LIST_ID)
    assert not verdict.valid and not verdict.revoked


def test_forged_revocation_signal_without_key_refused(site):
    """The victim's revoked certificate is public: an envelope naming it, signed with another key, is no signal."""
    pki = revoked_site(site)["pki"]
    from ansible_collections.vmic.fleet.plugins.module_utils.smime import sign_detached  # pylint: disable=import-outside-toplevel
    forged = sign_detached(encode(document(pki.revoked)), pki.revoked.cert_pem, pki.good.key_pem, check=False)
    verdict = verify(site, forged, expected_endorser="victim", expected_identifier=LIST_ID)
    assert not verdict.valid and not verdict.revoked


def test_forged_revocation_signal_replay_after_rekey_refused(site):
    """After a re-key, a mirror replays an older list signed with the endorser's old, revoked certificate: no withdrawal."""
    pki = revoked_site(site)["pki"]
    renewed = pki.leaf_with_subject("revoked_renewed", pki.revoked.cert.subject, pki.root)
    current = verify(site, sign(renewed, encode(document(renewed, version="5"))), expected_endorser="victim", expected_identifier=LIST_ID)
    assert current.valid, current.reasons
    replay = verify(site, sign(pki.revoked, encode(document(pki.revoked, version="4")), check=False), expected_endorser="victim",
                    expected_identifier=LIST_ID)
    assert not replay.valid and not replay.revoked


def test_one_corrupt_state_file_blocks_every_list_refused(site, tmp_path):
    """A corrupt state file refuses its own list; the other subscriptions are still judged."""
    from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import verify_lists  # pylint: disable=import-outside-toplevel
    pki = site["pki"]
    victim = tmp_path / "victim.list"
    victim.write_bytes(victim_list(site))
    other = tmp_path / "other.list"
    other.write_bytes(sign(pki.other, encode(document(pki.other, **{"dc:identifier": OTHER_LIST}))))
    (site["state_dir"] / "victim").mkdir()
    (site["state_dir"] / "victim" / (LIST_ID + ".json")).write_text("{corrupt")
    site["registry"] = EndorserRegistry([{"name": "victim", "dn": pki.good.dn, "ca": pki.good.issuer_dn},
                                         {"name": "attacker", "dn": pki.other.dn, "ca": pki.other.issuer_dn}])
    verdicts = verify_lists([{"src": str(victim), "endorser": "victim", "identifier": LIST_ID},
                             {"src": str(other), "endorser": "attacker", "identifier": OTHER_LIST}],
                            site["trust"], site["registry"], site["state"])
    assert [v.valid for v in verdicts] == [False, True]
    assert "unreadable" in verdicts[0].reasons[0] and verdicts[0].subscription["endorser"] == "victim"


def test_upgrade_window_rollback_refused(site):
    """A record of an earlier release (<uuid>.json, from the same source) is still the floor after an upgrade."""
    (site["state_dir"] / (LIST_ID + ".json")).write_text(
        '{"identifier": "%s", "version": "5", "sha256": "%s", "source": "%s"}' % (LIST_ID, "0" * 64, SOURCE))
    replay = verify(site, victim_list(site, version="4"), expected_endorser="victim", expected_identifier=LIST_ID)
    assert not replay.valid and "rollback" in " ".join(replay.reasons)
    newer = verify(site, victim_list(site, version="6"), expected_endorser="victim", expected_identifier=LIST_ID)
    assert newer.valid and newer.previous_version == "5", newer.reasons
    # the earlier release's record of another source is no floor for this one
    (site["state_dir"] / (OTHER_LIST + ".json")).write_text(
        '{"identifier": "%s", "version": "9", "sha256": "%s", "source": "https://elsewhere.test/x.list"}' % (OTHER_LIST, "0" * 64))
    own = sign(site["pki"].other, encode(document(site["pki"].other, **{"dc:identifier": OTHER_LIST})))
    assert verify(site, own, source=OTHER_SOURCE, expected_endorser="attacker").valid


def test_local_copy_checked_against_subscribed_url(site, tmp_path):
    """The publisher checks a local copy as a consumer would: the catalogue URL comes from the site, not from the list."""
    local = str(tmp_path / "site.list")
    assert verify(site, victim_list(site), source=local, subscribed_url=SOURCE, expected_endorser="victim").valid
    elsewhere = verify(site, victim_list(site), source=local, subscribed_url="https://mirror.test/x.list", expected_endorser="victim")
    assert not elsewhere.valid and "not trusted for this catalogue" in " ".join(elsewhere.reasons)
