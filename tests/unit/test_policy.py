"""Site approval policy: approve/deny rules, new-image policy, scope and per-host selection."""

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import PolicyError
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy, evaluate, select

from models import verdict

LIST_A = "11111111-1111-4111-8111-111111111111"
LIST_B = "22222222-2222-4222-8222-222222222222"
LIST_C = "44444444-4444-4444-8444-444444444444"


def image(uuid, title="img", vo="atlas", os_="Linux", arch="x86_64", hypervisor="kvm", **extra):
    meta = {"dc:identifier": uuid, "dc:title": title, "ad:vo": vo, "sl:os": os_, "sl:arch": arch,
            "hv:hypervisor": hypervisor, "hv:version": "1", "hv:size": 1, "sl:checksum:sha512": "a" * 128,
            "hv:uri": "https://repo.test/%s.img" % uuid}
    meta.update(extra)
    return meta


U1 = "aaaaaaaa-0000-4000-8000-000000000001"
U2 = "aaaaaaaa-0000-4000-8000-000000000002"
U3 = "aaaaaaaa-0000-4000-8000-000000000003"
U4 = "aaaaaaaa-0000-4000-8000-000000000004"


def lists():
    return [
        verdict("cern", LIST_A, [image(U1, "CernVM"), image(U2, "test image", vo="cms", arch="amd64")]),
        verdict("desy", LIST_B, [image(U3, "Xen box", hypervisor="xen", os_="FreeBSD"), image(U4, "old")], expired=[U4]),
        refused_with_images(),
    ]


def refused_with_images():
    """A refused list that still carries (unverified) images: none of them may be considered."""
    refused = verdict("other", "33333333-3333-4333-8333-333333333333", [image("bbbbbbbb-0000-4000-8000-000000000009", "from a refused list")])
    refused.valid = False
    return refused


def decide(spec, known=()):
    return dict((d.candidate.identifier, d) for d in evaluate(Policy(spec), lists(), known=known))


def approved(spec, known=()):
    return sorted(key for key, d in decide(spec, known).items() if d.approved)


def test_approve_all_from_endorser():
    assert approved({"rules": [{"action": "approve", "endorser": "cern"}]}) == [U1, U2]


def test_images_of_refused_lists_never_considered():
    decisions = decide({"rules": [{"action": "approve", "os": "linux"}]})
    assert "bbbbbbbb-0000-4000-8000-000000000009" not in decisions


def test_deny_beats_approve():
    spec = {"rules": [{"action": "approve", "endorser": ["cern", "desy"]},
                      {"action": "deny", "name": "no-tests", "jmespath": "contains(\"dc:title\", 'test')"}]}
    decisions = decide(spec)
    assert not decisions[U2].approved and "deny rule no-tests" in decisions[U2].reasons[0]
    assert decisions[U1].approved and decisions[U3].approved


def test_approve_by_uuid_vo_os_arch_hypervisor():
    assert approved({"rules": [{"action": "approve", "endorser": "desy", "identifier": U3.upper()}]}) == [U3]
    assert approved({"rules": [{"action": "approve", "vo": "CMS"}]}) == [U2]
    assert approved({"rules": [{"action": "approve", "os": "freebsd"}]}) == [U3]
    assert approved({"rules": [{"action": "approve", "arch": "x86_64", "hypervisor": "kvm"}]}) == [U1, U2]


def test_expired_image_never_approved():
    decisions = decide({"rules": [{"action": "approve", "endorser": "desy"}]})
    assert not decisions[U4].approved and "expired" in decisions[U4].reasons[0]


def test_no_rule_means_not_approved():
    decisions = decide({"rules": []})
    assert not any(d.approved for d in decisions.values())
    assert decisions[U1].reasons == ["no approve rule matches"]


def test_new_images_refused_unless_named():
    spec = {"new_images": "refuse",
            "rules": [{"action": "approve", "endorser": "cern"}, {"action": "approve", "endorser": "cern", "identifier": U2}]}
    assert approved(spec) == [U2]
    assert approved(spec, known=["cern/" + U1]) == [U1, U2]
    assert "new image" in decide(spec)[U1].reasons[0]


def test_new_images_known_under_another_endorser_refused():
    """An identity approved before is (endorser, uuid): the same UUID known from another endorser is new."""
    spec = {"new_images": "refuse", "rules": [{"action": "approve", "endorser": "cern"}]}
    assert approved(spec, known=["desy/" + U1]) == []


def test_identifier_claimed_by_two_lists_of_one_endorser_refused():
    data = lists()
    data.append(verdict("cern", LIST_C, [image(U1, "second copy")]))
    decisions = evaluate(Policy({"rules": [{"action": "approve", "os": "linux"}]}), data)
    assert not any(d.approved for d in decisions if d.candidate.identifier == U1)


def squatted_lists():
    """desy lists cern's image identifier U1 (an endorser squatting another's identifier)."""
    data = lists()
    data[1] = verdict("desy", LIST_B, [image(U3, "Xen box", hypervisor="xen", os_="FreeBSD"), image(U4, "old"), image(U1, "impostor")],
                      expired=[U4])
    return data


def test_identifier_squatting_by_denied_endorser_refused():
    """A squatter the policy does not approve changes nothing for the owner's image."""
    spec = {"rules": [{"action": "approve", "endorser": "cern"}]}
    decisions = [d for d in evaluate(Policy(spec), squatted_lists()) if d.candidate.identifier == U1]
    owner = [d for d in decisions if d.candidate.endorser == "cern"][0]
    squatter = [d for d in decisions if d.candidate.endorser == "desy"][0]
    assert owner.approved, owner.reasons
    assert not squatter.approved


def test_identifier_squatting_by_approved_endorser_refused():
    """Both endorsers approved: the image approved before keeps its identifier; the squatter is refused and reported."""
    spec = {"rules": [{"action": "approve", "os": "linux"}]}
    decisions = [d for d in evaluate(Policy(spec), squatted_lists(), known=["cern/" + U1]) if d.candidate.identifier == U1]
    owner = [d for d in decisions if d.candidate.endorser == "cern"][0]
    squatter = [d for d in decisions if d.candidate.endorser == "desy"][0]
    assert owner.approved and "identifier conflict" in " ".join(owner.reasons)
    assert not squatter.approved and "identifier conflict" in " ".join(squatter.reasons)
    # Neither approved before: both refused, the conflict named.
    fresh = [d for d in evaluate(Policy(spec), squatted_lists()) if d.candidate.identifier == U1]
    assert not any(d.approved for d in fresh)
    assert all("listed by endorsers cern, desy" in " ".join(d.reasons) for d in fresh)


def test_identifier_rule_without_endorser_refused():
    with pytest.raises(PolicyError, match="names an identifier but no endorser"):
        Policy({"rules": [{"action": "approve", "identifier": U1}]})


def test_selection_by_scope_hypervisor_and_arch():
    spec = {"rules": [{"action": "approve", "endorser": "cern", "clusters": ["batch"]},
                      {"action": "approve", "endorser": "desy"}]}
    decisions = evaluate(Policy(spec), lists())
    hosts = {
        "hv1": {"cluster": "batch", "hypervisor": "kvm", "arch": "x86_64"},
        "hv2": {"cluster": "cloud", "hypervisor": "kvm", "arch": "amd64"},
        "hv3": {"cluster": "cloud", "hypervisor": "xen"},
    }
    assert select(decisions, hosts) == {"hv1": [U1, U2], "hv2": [], "hv3": [U3]}


@pytest.mark.parametrize("spec,reason", [
    ({"rules": [{"action": "allow", "endorser": "x"}]}, "action must be approve or deny"),
    ({"rules": [{"action": "approve"}]}, "gives no criterion"),
    ({"rules": [{"action": "approve", "colour": "red"}]}, "unknown keys colour"),
    ({"rules": [{"action": "approve", "jmespath": "[[["}]}, "does not compile"),
    ({"rules": [{"action": "deny", "os": "x", "clusters": ["a"]}]}, "approve rules only"),
    ({"rules": [{"action": "approve", "vo": []}]}, "empty list"),
    ({"rules": [{"action": "approve", "vo": 5}]}, "non-empty string"),
    ({"new_images": "maybe"}, "new_images must be accept or refuse"),
    ({"rules": "all"}, "rules must be a list"),
])
def test_malformed_policy_refused(spec, reason):
    with pytest.raises(PolicyError, match=reason):
        Policy(spec)


def test_legacy_approved_set_uuid_counts_for_any_endorser():
    """An approved set of an earlier release (bare UUIDs, read as */uuid) keeps new_images refuse from withdrawing everything."""
    spec = {"new_images": "refuse", "rules": [{"action": "approve", "endorser": "cern"}]}
    assert approved(spec, known=["*/" + U1]) == [U1]


def test_known_images_option_validated():
    from ansible_collections.vmic.fleet.plugins.module_utils.approvedset import check_known  # pylint: disable=import-outside-toplevel
    assert check_known(["cern/" + U1, U2]) == frozenset(["cern/" + U1, "*/" + U2])
    for bad in (["../" + U1], ["cern/not-a-uuid"], "cern/" + U1, [5]):
        with pytest.raises(PolicyError):
            check_known(bad)
