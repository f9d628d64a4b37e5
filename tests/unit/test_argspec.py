"""The shared argument specs (module_utils/argspec.py): what Ansible's validation hands the module logic.

Each case validates real task arguments with Ansible's own validator (as AnsibleModule does) and gives
the result to the code the modules give it to.
"""

import pytest

from ansible.module_utils.common.arg_spec import ArgumentSpecValidator

from ansible_collections.vmic.fleet.plugins.module_utils.argspec import (
    engine_argument_spec, policy_argument_spec, trust_argument_spec)
from ansible_collections.vmic.fleet.plugins.module_utils.errors import EngineError
from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import DEFAULT_SOCKETS, ENGINE_KINDS, engine_from_spec, engine_owner
from ansible_collections.vmic.fleet.plugins.module_utils.policy import Policy
from ansible_collections.vmic.fleet.plugins.module_utils.truststore import EndorserRegistry

ENDORSER = {"name": "site-it", "dn": "/DC=org/DC=example/CN=Image Endorser", "ca": "/DC=org/DC=example/CN=Example CA"}


def validated(spec, params):
    result = ArgumentSpecValidator(spec).validate(params)
    assert not result.error_messages, result.error_messages
    return result.validated_parameters


def refused(spec, params):
    return ArgumentSpecValidator(spec).validate(params).error_messages


def test_omitted_engine_is_the_default_libtorrent_engine():
    engine = validated(engine_argument_spec(), {})["engine"]
    client = engine_from_spec(engine)
    assert client.socket_path == DEFAULT_SOCKETS["libtorrent"]
    assert client.timeout == 30
    assert engine_owner(engine) is None


def test_rtorrent_engine_without_socket_not_sent_to_libtorrent_socket_refused():
    # A typed default socket would send an rtorrent spec to the libtorrent engine's socket.
    engine = validated(engine_argument_spec(), {"engine": {"kind": "rtorrent", "user": "root"}})["engine"]
    assert engine_from_spec(engine).socket_path == DEFAULT_SOCKETS["rtorrent"]
    with pytest.raises(EngineError, match="engine.user"):
        engine_owner(engine)        # rtorrent as root is refused by the logic, not hidden by the spec


def test_unknown_engine_kind_and_key_refused():
    assert refused(engine_argument_spec(), {"engine": {"kind": "transmission"}})
    assert refused(engine_argument_spec(), {"engine": {"kind": "libtorrent", "sockt": "/tmp/x.sock"}})
    assert validated(engine_argument_spec(), {})["engine"]["kind"] == ENGINE_KINDS[0]
    assert engine_argument_spec()["engine"]["options"]["kind"]["choices"] == list(ENGINE_KINDS)


def test_endorsers_with_only_required_keys_reach_the_registry():
    params = validated(trust_argument_spec(), {"ca_path": "/etc/grid-security/certificates", "endorsers": [dict(ENDORSER)]})
    entry = params["endorsers"][0]
    assert entry["ca_fingerprint"] is None and entry["description"] is None and entry["urls"] == []
    registry = EndorserRegistry(params["endorsers"])
    assert registry.names() == ["site-it"]
    assert params["crl_check"] is True


def test_endorser_unknown_key_or_missing_ca_refused():
    assert refused(trust_argument_spec(), {"endorsers": [dict(ENDORSER, cert="/tmp/x.pem")]})
    assert refused(trust_argument_spec(), {"endorsers": [{"name": "x", "dn": "/CN=x"}]})


def test_policy_defaults_and_unknown_key_refused():
    policy = Policy(validated(policy_argument_spec(), {"policy": {}})["policy"])
    assert policy.new_images == "accept" and policy.rules == []
    assert refused(policy_argument_spec(), {"policy": {"new_images": "maybe"}})
    assert refused(policy_argument_spec(), {"policy": {"rule": []}})
    rules = [{"action": "approve", "endorser": "site-it", "clusters": ["prod"]}]
    policy = Policy(validated(policy_argument_spec(), {"policy": {"new_images": "refuse", "rules": rules}})["policy"])
    assert policy.new_images == "refuse" and policy.rules[0].action == "approve"
