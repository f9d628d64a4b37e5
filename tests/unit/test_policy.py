"""Site approval policy: approve/deny rules, new-image policy, scope and per-host selection."""

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.errors import PolicyError
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy, evaluate, select

LIST_A = "11111111-1111-4111-8111-111111111111"
LIST_B = "22222222-2222-4222-8222-222222222222"


def image(uuid, title="img", vo="atlas", os_="Linux", arch="x86_64", hypervisor="kvm", **extra):
    meta = {"dc:identifier": uuid, "dc:title": title, "ad:vo": vo, "sl:os": os_, "sl:arch": arch,
            "hv:hypervisor": hypervisor, "hv:version": "1", "hv:size": 1, "sl:checksum:sha512": "a" * 128}
    meta.update(extra)
    return meta


U1 = "aaaaaaaa-0000-4000-8000-000000000001"
U2 = "aaaaaaaa-0000-4000-8000-000000000002"
U3 = "aaaaaaaa-0000-4000-8000-000000000003"
U4 = "aaaaaaaa-0000-4000-8000-000000000004"


def lists():
    return [
        {"valid": True, "endorser": "cern", "metadata": {"dc:identifier": LIST_A}, "expired_images": [],
         "images": [image(U1, "CernVM"), image(U2, "test image", vo="cms", arch="amd64")]},
        {"valid": True, "endorser": "desy", "metadata": {"dc:identifier": LIST_B}, "expired_images": [U4],
         "images": [image(U3, "Xen box", hypervisor="xen", os_="FreeBSD"), image(U4, "old")]},
        {"valid": False, "endorser": None, "metadata": {"dc:identifier": "33333333-3333-4333-8333-333333333333"},
         "images": [image("bbbbbbbb-0000-4000-8000-000000000009", "from a refused list")]},
    ]


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
    assert approved({"rules": [{"action": "approve", "identifier": U3.upper()}]}) == [U3]
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
            "rules": [{"action": "approve", "endorser": "cern"}, {"action": "approve", "identifier": U2}]}
    assert approved(spec) == [U2]
    assert approved(spec, known=[U1]) == [U1, U2]
    assert "new image" in decide(spec)[U1].reasons[0]


def test_identifier_claimed_by_two_lists_refused():
    data = lists()
    data[1]["images"].append(image(U1, "impostor"))
    decisions = evaluate(Policy({"rules": [{"action": "approve", "os": "linux"}]}), data)
    assert not any(d.approved for d in decisions if d.candidate.identifier == U1)


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
