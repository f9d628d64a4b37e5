# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The argument specs that several modules share, defined once.

Each function returns a fresh ``{option name: spec}`` mapping to merge into a module's
``argument_spec``; the documentation of the same options is in ``plugins/doc_fragments/``
(``engine``, ``trust``), and ``ansible-test sanity`` (validate-modules) checks that both agree.
"""

from __future__ import annotations

from ansible_collections.vmic.fleet.plugins.module_utils.imagesync import ENGINE_KINDS


def engine_argument_spec():
    """``engine``: kind, socket, user, timeout, as ``imagesync.engine_from_spec`` / ``engine_owner`` read them.

    ``socket`` has no default here: ``engine_from_spec`` picks the socket of the kind, so an rtorrent
    spec without ``socket`` is not sent to the libtorrent engine's socket.
    """
    return dict(
        engine=dict(type="dict", apply_defaults=True, options=dict(
            kind=dict(type="str", choices=list(ENGINE_KINDS), default=ENGINE_KINDS[0]),
            socket=dict(type="path"),
            user=dict(type="str"),
            timeout=dict(type="int", default=30),
        )),
    )


def endorser_options():
    """Suboptions of one ``endorsers`` entry, as ``truststore.EndorserRegistry`` reads it."""
    return dict(
        name=dict(type="str", required=True),
        dn=dict(type="str", required=True),
        ca=dict(type="str", required=True),
        ca_fingerprint=dict(type="str"),
        description=dict(type="str"),
        urls=dict(type="list", elements="str", default=[]),
    )


def trust_argument_spec():
    """Trust anchors, CRLs and endorsers (``truststore.TrustStore`` and ``EndorserRegistry``).

    Modules add ``mutually_exclusive`` and ``required_one_of`` for ``ca_path`` / ``ca_file``.
    """
    return dict(
        ca_path=dict(type="path"),
        ca_file=dict(type="path"),
        crl_file=dict(type="path"),
        crl_check=dict(type="bool", default=True),
        endorsers=dict(type="list", elements="dict", required=True, options=endorser_options()),
    )


def policy_argument_spec():
    """``policy``: new_images and rules, as ``policy.Policy`` reads them.

    The keys of each rule are many and depend on the rule's action; ``policy.Rule`` checks them (with
    messages that name the rule), so rules stay plain mappings here.
    """
    return dict(
        policy=dict(type="dict", required=True, options=dict(
            new_images=dict(type="str", choices=["accept", "refuse"], default="accept"),
            rules=dict(type="list", elements="dict", default=[]),
        )),
    )
