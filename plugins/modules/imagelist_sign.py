#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: imagelist_sign
short_description: Build and sign a HEPiX image list from a catalogue source
version_added: 0.1.0
description:
  - Endorser side. Reads a catalogue source (YAML file or data - list metadata and images, each image
    with a C(file) to hash or with C(sl:checksum:sha512) and C(hv:size) given) and writes a HEPiX image
    list signed as detached S/MIME (C(multipart/signed)), readable by C(openssl smime -verify),
    vmcatcher, atrope and cloudkeeper.
  - C(hv:dn) and C(hv:ca) are taken from the signing certificate. A certificate whose subject or issuer
    differs from the C(hv:dn)/C(hv:ca) the catalogue names, that lacks the digitalSignature key usage,
    that is not valid now, or that does not match the key, is refused.
  - C(hv:version) is bumped only when the content changes, so a second run with the same source
    changes nothing. C(dc:date:created) and C(dc:date:expires) are set from O(lifetime_days); the list is
    re-signed (and bumped) when less than O(renew_before_days) remain.
  - The signed list is written atomically; a failed run leaves the previous list in place.
  - O(mode), O(owner), O(group) and the SELinux options apply to O(dest) and to each C(.torrent) in O(torrent_dir);
    files are written 0644 when O(mode) is not given.
  - The signer records the last C(hv:version) it published of each list (by list UUID) and the sha256 of
    that payload in O(state_file). When the list at O(dest) is missing or unreadable, signing continues
    above the recorded version instead of starting again at 1 (which every hypervisor would refuse as
    a rollback); a list at O(dest) that is older than the recorded one is signed again above it; and
    publishing a version lower than the recorded one (for example from a concurrent run) is refused.
    An unreadable O(state_file) is refused rather than ignored. The record is written (atomically)
    before the list.
author:
  - vmic.fleet contributors (@vmic)
requirements:
  - the C(cryptography) Python library, 3.2 or later
  - PyYAML when O(catalogue) is a file
options:
  catalogue:
    description: Path of the YAML catalogue source.
    type: path
  catalogue_data:
    description: The catalogue source as data (same structure as the YAML file).
    type: dict
  dest:
    description: Path of the signed image list to write.
    type: path
    required: true
  cert:
    description: PEM certificate of the endorser.
    type: path
    required: true
  key:
    description: PEM private key of the endorser.
    type: path
    required: true
  key_passphrase:
    description: Passphrase of O(key), if it is encrypted.
    type: str
  chain:
    description: PEM files of intermediate CA certificates to include in the signature.
    type: list
    elements: path
    default: []
  digest:
    description: Digest algorithm of the signature.
    type: str
    choices: [sha256, sha384, sha512]
    default: sha256
  lifetime_days:
    description: Days from signing until C(dc:date:expires).
    type: int
    default: 28
  renew_before_days:
    description: Re-sign an unchanged list when fewer than this many days remain before it expires.
    type: int
    default: 7
  torrent_dir:
    description:
      - Directory to write a hybrid v1+v2 C(.torrent) for every image given with a C(file), named
        C(<file name>.torrent) where the file name is the last component of the image's C(hv:uri).
        The torrent's web seed is C(hv:uri), its announce list O(trackers). Its sha256, both info-hashes,
        its URL and piece size go into the signed list (C(vmic:torrent), C(vmic:torrent_sha256),
        C(vmic:btih_v1), C(vmic:btih_v2), C(vmic:piece_size)), so a torrent is trusted only through the list.
      - Requires O(torrent_base_url) and the libtorrent Python bindings.
    type: path
  torrent_base_url:
    description: URL under which O(torrent_dir) is published.
    type: str
  trackers:
    description: Announce URLs of the site trackers.
    type: list
    elements: str
    default: []
  piece_size:
    description: Torrent piece size in bytes (a power of two).
    type: int
    default: 4194304
  hash_cache:
    description:
      - File where the sha512 of each image file is cached by path, size and mtime, so that unchanged
        images are not hashed again on every run.
    type: path
  state_file:
    description:
      - File where the signer records the last published version and payload digest of each list.
      - Keep it with the signer's other state (and its backups); losing both it and O(dest) is the only way
        the version can restart at 1.
      - Defaults to C(.<name of dest>.signer-state.json) in the directory of O(dest).
    type: path
attributes:
  check_mode:
    support: full
    description: Reports whether the list would be re-signed and the version it would get.
  diff_mode:
    support: full
    description: Shows the list version and its images (identifier, version, size, digest prefix) before and after.
extends_documentation_fragment:
  - ansible.builtin.files
  - vmic.fleet.action_group
"""

EXAMPLES = r"""
- name: Sign the site's base image list
  vmic.fleet.imagelist_sign:
    catalogue: /srv/catalogues/base.yml
    dest: /srv/repo/lists/base.list
    cert: /etc/vmic/endorser/cert.pem
    key: /etc/vmic/endorser/key.pem
    lifetime_days: 28
    owner: root
    group: www-data
    mode: "0644"

- name: Sign from inline data
  vmic.fleet.imagelist_sign:
    catalogue_data:
      list:
        dc:identifier: 2c8b6f3e-6a54-4b1e-9b1c-0e4f6a1d2b3c
        dc:title: Demo images
        hv:uri: https://repo.example.org/lists/demo.list
      images:
        - dc:identifier: 6f1e2d3c-4b5a-4968-8776-655443322110
          dc:title: Debian 12
          hv:uri: https://repo.example.org/images/debian12.qcow2
          hv:version: "1"
          sl:arch: x86_64
          sl:os: Linux
          hv:hypervisor: kvm
          file: /srv/images/debian12.qcow2
    dest: /srv/repo/lists/demo.list
    cert: cert.pem
    key: key.pem
"""

RETURN = r"""
version:
  description: C(hv:version) of the list at O(dest) after the run (or that it would have, in check mode).
  returned: success
  type: str
previous_version:
  description: C(hv:version) of the list that was at O(dest) before, if any.
  returned: success
  type: str
reason:
  description: Why the list was (or was not) signed again.
  returned: success
  type: str
  sample: content changed
identifier:
  description: C(dc:identifier) of the list.
  returned: success
  type: str
expires:
  description: C(dc:date:expires) of the list.
  returned: success
  type: str
state_file:
  description: The signer state file used.
  returned: success
  type: str
torrents_written:
  description: Paths of the C(.torrent) files written (or that would be written, in check mode).
  returned: success
  type: list
  elements: str
images:
  description: The images as signed.
  returned: success
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.vmic.fleet.plugins.module_utils.atomic_io import AtomicWriteError
from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import fail_missing_dependency
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.publish import (
    HashCache, PublisherState, TorrentPublisher, default_state_file, existing_envelope, image_summary, load_catalogue, plan_signed_list,
    publish_signed_list)


def set_file_attributes(module, paths, changed):
    """Apply the file common arguments (mode, owner, group, SELinux) to each of ``paths`` that exists; the new ``changed``."""
    for path in paths:
        if os.path.lexists(path):
            changed = module.set_fs_attributes_if_different(module.load_file_common_arguments(module.params, path=path), changed)
    return changed


def main():
    module = AnsibleModule(
        argument_spec=dict(
            catalogue=dict(type="path"),
            catalogue_data=dict(type="dict"),
            dest=dict(type="path", required=True),
            cert=dict(type="path", required=True),
            key=dict(type="path", required=True, no_log=False),
            key_passphrase=dict(type="str", no_log=True),
            chain=dict(type="list", elements="path", default=[]),
            digest=dict(type="str", choices=["sha256", "sha384", "sha512"], default="sha256"),
            lifetime_days=dict(type="int", default=28),
            renew_before_days=dict(type="int", default=7),
            torrent_dir=dict(type="path"),
            torrent_base_url=dict(type="str"),
            trackers=dict(type="list", elements="str", default=[], no_log=False),
            piece_size=dict(type="int", default=4 * 1024 * 1024),
            hash_cache=dict(type="path"),
            state_file=dict(type="path"),
        ),
        mutually_exclusive=[("catalogue", "catalogue_data")],
        required_together=[("torrent_dir", "torrent_base_url")],
        required_one_of=[("catalogue", "catalogue_data")],
        add_file_common_args=True,
        supports_check_mode=True,
    )
    params = module.params
    if params["lifetime_days"] < 1 or params["renew_before_days"] < 0 or params["renew_before_days"] >= params["lifetime_days"]:
        module.fail_json(msg="lifetime_days must be at least 1 and renew_before_days between 0 and lifetime_days - 1")
    try:
        if params["catalogue"]:
            catalogue, where = load_catalogue(params["catalogue"]), params["catalogue"]
        else:
            catalogue, where = params["catalogue_data"], "(catalogue_data)"
        state_file = params["state_file"] or default_state_file(params["dest"])
        state = PublisherState(state_file)
        existing = existing_envelope(params["dest"])
        cache = HashCache(params["hash_cache"])
        publisher = None
        if params["torrent_dir"]:
            publisher = TorrentPublisher(params["torrent_dir"], params["torrent_base_url"], params["trackers"], params["piece_size"],
                                         check_mode=module.check_mode)
        plan = plan_signed_list(catalogue, where, params["cert"], params["key"], existing=existing,
                                key_passphrase=params["key_passphrase"], chain_paths=params["chain"], digest=params["digest"],
                                lifetime_days=params["lifetime_days"], renew_before_days=params["renew_before_days"],
                                hasher=cache.hash, image_hook=publisher, state=state)
        if not module.check_mode:
            cache.save()
            publish_signed_list(params["dest"], plan, state)
    except MissingDependencyError as exc:
        fail_missing_dependency(module, exc)
    except VmicError as exc:
        module.fail_json(msg=str(exc))
    except AtomicWriteError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg="signed list %s: %s" % (params["dest"], exc))

    image_list = plan.image_list
    torrents = publisher.written if publisher is not None else []
    changed = set_file_attributes(module, [params["dest"]] + (publisher.torrents if publisher is not None else []), plan.changed or bool(torrents))
    result = dict(
        changed=changed,
        state_file=state_file,
        torrents_written=torrents,
        version=image_list.version,
        previous_version=plan.previous_version,
        reason=plan.reason,
        identifier=image_list.identifier,
        expires=image_list.expires,
        images=[image.to_dict() for image in image_list.images],
    )
    if plan.changed and not module.check_mode and os.path.exists(params["dest"]):
        result["dest"] = params["dest"]
    if module._diff:
        result["diff"] = {
            "before_header": params["dest"],
            "after_header": params["dest"],
            "before": image_summary(plan.previous) if plan.previous is not None else "",
            "after": image_summary(image_list),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
