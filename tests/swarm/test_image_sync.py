"""image_sync end to end on a real swarm: every host converges to its approved, selected set.

The module file itself runs in each host's network namespace (the way Ansible runs it, minus the
transport): it fetches the signed list and the torrents over HTTP from the repository host, verifies
them with a real PKI and openssl, downloads through the host's engine service (tracker, DHT, PEX,
web seed), checks every byte and commits into the host's store.
"""

import json
import os
import subprocess
import sys

import pytest

from testfleet.collection import COLLECTIONS, REPO_ROOT
from testfleet.swarm import sha512_file

sys.path.insert(0, os.path.join(REPO_ROOT, "tests", "unit"))

from pki import TestPKI  # noqa: E402  pylint: disable=wrong-import-position

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import write_atomic  # noqa: E402
from ansible_collections.vmic.fleet.plugins.module_utils.publish import TorrentPublisher, plan_signed_list  # noqa: E402

MODULE = os.path.join(REPO_ROOT, "plugins", "modules", "image_sync.py")
LIST_ID = "3c2b1a09-8f7e-4d6c-9b5a-4f3e2d1c0b9a"
IMAGE_A = "aa000000-0000-4000-8000-00000000000a"
IMAGE_B = "bb000000-0000-4000-8000-00000000000b"
PEERS = 8


def publish(swarm, pki, images, existing=None):
    """Sign the catalogue into the repository (lists/site.list, torrents/*.torrent); returns the plan."""
    base = swarm.web_seed_url_base
    catalogue = {
        "list": {"dc:identifier": LIST_ID, "dc:title": "Swarm list", "hv:uri": base + "lists/site.list"},
        "images": [{"dc:identifier": identifier, "dc:title": title, "hv:uri": base + name, "hv:version": version,
                    "sl:arch": "x86_64", "hv:hypervisor": "kvm", "file": os.path.join(swarm.repo_dir, name)}
                   for identifier, title, name, version in images],
    }
    publisher = TorrentPublisher(os.path.join(swarm.repo_dir, "torrents"), base + "torrents/", [swarm.tracker.announce_url],
                                 piece_size=256 * 1024)
    plan = plan_signed_list(catalogue, "swarm", pki.good.cert_path, pki.good.key_path, existing=existing, image_hook=publisher)
    os.makedirs(os.path.join(swarm.repo_dir, "lists"), exist_ok=True)
    if plan.changed:
        write_atomic(os.path.join(swarm.repo_dir, "lists", "site.list"), plan.envelope)
    return plan


def seed_all(swarm, plan):
    from ansible_collections.vmic.fleet.plugins.module_utils.torrent import parse_torrent  # pylint: disable=import-outside-toplevel
    for image in plan.image_list.images:
        name = image.torrent_uri.rsplit("/", 1)[1]
        with open(os.path.join(swarm.repo_dir, "torrents", name), "rb") as handle:
            swarm.seed(parse_torrent(handle.read()))


def module_args(swarm, node, pki, policy, check_mode=False):
    return {"ANSIBLE_MODULE_ARGS": {
        "lists": [{"src": swarm.web_seed_url_base + "lists/site.list", "endorser": "good", "identifier": LIST_ID}],
        "ca_path": pki.ca_path,
        "endorsers": [{"name": "good", "dn": pki.good.dn, "ca": pki.good.issuer_dn}],
        "policy": policy,
        "profile": {"cluster": "batch", "hypervisor": "kvm", "arch": "x86_64"},
        "store_dir": node.store_dir,
        "state_dir": os.path.join(node.dir, "lists"),
        "archive_dir": os.path.join(node.dir, "archive"),
        "engine": {"kind": "libtorrent", "socket": node.socket_path},
        "allow_http": True,
        "timeout": 240,
        "_ansible_check_mode": check_mode,
        "_ansible_diff": True,
    }}


def run_everywhere(swarm, pki, policy, nodes=None, check_mode=False):
    """Run the image_sync module on every node at once; returns {name: result dict}."""
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    procs = {}
    for node in nodes or swarm.peers:
        args = os.path.join(node.dir, "args.json")
        with open(args, "w") as handle:
            json.dump(module_args(swarm, node, pki, policy, check_mode), handle)
        procs[node.name] = node.host.popen([sys.executable, MODULE, args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        try:
            results[name] = json.loads(out.decode())
        except ValueError:
            pytest.fail("image_sync on %s printed no JSON (exit %s): %s %s" % (name, proc.returncode, out[-2000:], err[-2000:]))
    return results


def store_listing(node):
    found = []
    for root, _dirs, files in os.walk(node.store_dir):
        for name in files:
            found.append(os.path.relpath(os.path.join(root, name), node.store_dir))
    return sorted(found)


APPROVE_ALL = {"rules": [{"action": "approve", "endorser": "good"}]}
DENY_B = {"rules": [{"action": "approve", "endorser": "good"}, {"action": "deny", "endorser": "good", "identifier": IMAGE_B}]}


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return TestPKI(tmp_path_factory.mktemp("pki"))


def test_image_sync_converges_every_host_then_retires_withdrawn_image(make_swarm, pki):
    swarm = make_swarm(peers=PEERS)
    swarm.make_image("disk-a.img", 4 << 20)
    swarm.make_image("disk-b.img", 2 << 20)
    plan = publish(swarm, pki, [(IMAGE_A, "Disk A", "disk-a.img", "1"), (IMAGE_B, "Disk B", "disk-b.img", "1")])
    seed_all(swarm, plan)
    swarm.start_peers()
    expected = dict((image.identifier, image.sha512) for image in plan.image_list.images)

    planned = run_everywhere(swarm, pki, APPROVE_ALL, check_mode=True)
    for name, result in planned.items():
        assert not result.get("failed"), (name, result.get("msg"))
        assert result["changed"] and sorted(result["plan"]["add"]) == sorted(["%s 1" % IMAGE_A, "%s 1" % IMAGE_B])
    assert all(store_listing(node) == [] for node in swarm.peers)

    results = run_everywhere(swarm, pki, APPROVE_ALL)
    for node in swarm.peers:
        result = results[node.name]
        assert not result.get("failed"), (node.name, result.get("msg"))
        assert result["changed"]
        held = dict((item["identifier"], item) for item in result["held"])
        assert sorted(held) == sorted(expected)
        for identifier, sha512 in expected.items():
            assert sha512_file(held[identifier]["path"]) == sha512
        for image in result["images"]:
            assert image["bytes_from_peers"] + image["bytes_from_web_seed"] > 0

    again = run_everywhere(swarm, pki, APPROVE_ALL)
    assert not any(result["changed"] for result in again.values()), again

    withdrawn = run_everywhere(swarm, pki, DENY_B)
    for node in swarm.peers:
        result = withdrawn[node.name]
        assert not result.get("failed"), result.get("msg")
        assert [item["identifier"] for item in result["retired"]] == [IMAGE_B]
        assert [item["identifier"] for item in result["held"]] == [IMAGE_A]
        assert os.path.isdir(os.path.join(node.dir, "archive", IMAGE_B))


def two_hosts_holding_image_a(make_swarm, pki, size):
    """A swarm of two hosts that have committed version 1 of image A (disk-a.img); returns (swarm, plan, results)."""
    swarm = make_swarm(peers=2)
    swarm.make_image("disk-a.img", size)
    plan = publish(swarm, pki, [(IMAGE_A, "Disk A", "disk-a.img", "1")])
    seed_all(swarm, plan)
    swarm.start_peers()
    first = run_everywhere(swarm, pki, APPROVE_ALL)
    assert all(not r.get("failed") for r in first.values()), first
    return swarm, plan, first


def test_torrent_not_matching_signed_list_refused_and_store_untouched(make_swarm, pki):
    swarm, _plan, _first = two_hosts_holding_image_a(make_swarm, pki, 1 << 20)
    before = dict((node.name, store_listing(node)) for node in swarm.peers)

    # A new version is signed, then the repository's torrent is replaced by another one.
    swarm.make_image("disk-a2.img", 1 << 20)
    publish(swarm, pki, [(IMAGE_A, "Disk A", "disk-a2.img", "2")], existing=open(os.path.join(swarm.repo_dir, "lists", "site.list"), "rb").read())
    torrent_path = os.path.join(swarm.repo_dir, "torrents", "disk-a2.img.torrent")
    forged = swarm.make_torrent(os.path.join(swarm.repo_dir, "disk-a2.img"), piece_size=512 * 1024)
    with open(torrent_path, "wb") as handle:
        handle.write(forged.data)
    keys_before = dict((node.name, sorted(s["key"] for s in node.status())) for node in swarm.peers)

    results = run_everywhere(swarm, pki, APPROVE_ALL)
    for node in swarm.peers:
        result = results[node.name]
        assert result.get("failed")
        assert "sha256" in result["msg"] and "differs from the signed list" in result["msg"]
        assert store_listing(node) == before[node.name]
        assert sorted(s["key"] for s in node.status()) == keys_before[node.name]


def test_reendorsed_same_bytes_keeps_committed_image(make_swarm, pki):
    """A new hv:version of unchanged bytes. Before, the engine (which held the torrent) left the new partial empty,
    the check failed, the engine was told to delete the torrent's data -- the committed image a VM had open -- and
    the store was reported unchanged. Now: committed without a transfer, v1 retired once closed, never deleted in use."""
    swarm, plan, first = two_hosts_holding_image_a(make_swarm, pki, 2 << 20)
    sha512 = plan.image_list.images[0].sha512
    v1 = dict((node.name, first[node.name]["held"][0]["path"]) for node in swarm.peers)

    with open(os.path.join(swarm.repo_dir, "lists", "site.list"), "rb") as handle:
        publish(swarm, pki, [(IMAGE_A, "Disk A", "disk-a.img", "2")], existing=handle.read())
    busy_node, idle_node = swarm.peers
    # An interrupted commit on one host left a file in v2's directory without metadata: never in the store.
    leftover = os.path.join(idle_node.store_dir, IMAGE_A, "2", "disk-a.img")
    os.makedirs(os.path.dirname(leftover))
    with open(leftover, "wb") as handle:
        handle.write(b"half-committed")
    with open(v1[busy_node.name], "rb") as vm:          # a VM runs from v1 on one host
        results = run_everywhere(swarm, pki, APPROVE_ALL)
        for node in swarm.peers:
            result = results[node.name]
            assert not result.get("failed"), (node.name, result.get("msg"))
            assert result["changed"]
            assert [(i["version"], i["action"]) for i in result["images"]] == [("2", "added (same bytes as %s 1, no transfer)" % IMAGE_A)]
            held = dict((i["version"], i["path"]) for i in result["held"])
            assert sorted(held) == (["1", "2"] if node is busy_node else ["2"])
            v2 = held["2"]
            assert sha512_file(v2) == sha512
            assert os.path.samefile(v2, v1[node.name] if node is busy_node else os.path.join(node.dir, "archive", IMAGE_A, "1", "disk-a.img"))
            # the engine seeds the torrent from v2 now
            assert [s["save_dir"] for s in node.status()] == [os.path.dirname(v2)]
        assert [i["version"] for i in results[busy_node.name]["in_use"]] == ["1"] and results[busy_node.name]["retired"] == []
        assert sha512_file(v1[busy_node.name]) == sha512 and vm.read(16)
        assert [i["version"] for i in results[idle_node.name]["retired"]] == ["1"]
        assert sha512_file(os.path.join(idle_node.dir, "archive", IMAGE_A, "1", "disk-a.img")) == sha512

    # closed: the next run retires v1 there too, and the store holds v2
    again = run_everywhere(swarm, pki, APPROVE_ALL)
    assert [i["version"] for i in again[busy_node.name]["retired"]] == ["1"] and again[busy_node.name]["changed"]
    assert not again[idle_node.name]["changed"]
    for node in swarm.peers:
        held = [path for path in store_listing(node) if not path.startswith(".partial")]
        assert held == [os.path.join(IMAGE_A, name) for name in ("2.json", "2.torrent", os.path.join("2", "disk-a.img"), "current")]
