"""Canonical DNs and the per-list state that stops rollback and replay."""

import os

import pytest

from ansible_collections.vmic.fleet.plugins.module_utils.dn import DNError, canonical_dn, same_dn
from ansible_collections.vmic.fleet.plugins.module_utils.liststate import ListStateStore, StateError

UUID = "4e186b44-2c64-40ea-97d5-e9e5c0bce059"


def test_dn_forms_agree():
    assert canonical_dn("CN=Owen Synge,OU=DESY,O=GermanGrid,C=DE") == "/C=DE/O=GermanGrid/OU=DESY/CN=Owen Synge"
    assert same_dn("/c=DE/o=GermanGrid/Email=a@b/CN=x", "/C=DE/O=GermanGrid/emailAddress=a@b/CN=x")
    assert canonical_dn(" /DC=org/DC=example/CN=host/x.example.org ") == "/DC=org/DC=example/CN=host/x.example.org"


@pytest.mark.parametrize("bad", ["", "garbage", "/C=DE/XX=1", "/CN=", "x" * 5000])
def test_bad_dn_refused(bad):
    with pytest.raises(DNError):
        canonical_dn(bad)


def test_state_refuses_rollback_and_same_version_other_bytes(tmp_path):
    store = ListStateStore(str(tmp_path))
    assert store.rollback_reason("cern", UUID, "5", "a" * 64) is None
    assert store.record("cern", UUID, "5", "a" * 64, "src")
    assert not store.record("cern", UUID, "5", "a" * 64, "src")
    assert "rollback" in store.rollback_reason("cern", UUID, "4", "b" * 64)
    assert "same version, different bytes" in store.rollback_reason("cern", UUID, "5", "b" * 64)
    assert store.rollback_reason("cern", UUID, "5", "a" * 64) is None
    assert store.rollback_reason("cern", UUID, "6", "c" * 64) is None
    assert sorted(os.listdir(str(tmp_path))) == ["cern"]
    assert sorted(os.listdir(str(tmp_path / "cern"))) == ["%s.json" % UUID]


def test_other_endorser_state_freeze_refused(tmp_path):
    """One endorser's record of a list UUID is no floor for another endorser's list with that UUID."""
    store = ListStateStore(str(tmp_path))
    assert store.record("attacker", UUID, "999999", "a" * 64, "src")
    assert store.rollback_reason("victim", UUID, "5", "b" * 64) is None
    assert store.get("victim", UUID) is None


def test_corrupt_state_file_is_an_error(tmp_path):
    (tmp_path / "cern").mkdir()
    (tmp_path / "cern" / ("%s.json" % UUID)).write_text("{not json")
    with pytest.raises(StateError, match="unreadable"):
        ListStateStore(str(tmp_path)).get("cern", UUID)


@pytest.mark.parametrize("endorser,identifier", [("cern", "../../etc/passwd"), ("..", UUID), ("a/b", UUID), ("", UUID)])
def test_state_path_traversal_refused(tmp_path, endorser, identifier):
    with pytest.raises(StateError):
        ListStateStore(str(tmp_path)).get(endorser, identifier)
