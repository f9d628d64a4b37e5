# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Trust anchors and the registry of trusted endorsers.

``TrustStore`` names the certificate authorities a host trusts, either as a CA directory in IGTF
layout (``<hash>.0`` certificates, ``<hash>.r0`` CRLs as fetch-crl writes them, for example
``/etc/grid-security/certificates``) or as a PEM bundle file, and turns that into the arguments of
the ``openssl`` command that verifies signatures.  Only those anchors are trusted: OpenSSL's default
locations (the system's web PKI bundle) are switched off explicitly.

CRL checking (``crl_check=True``, the default) uses OpenSSL's ``-crl_check_all``: every certificate
of the chain, the signer and each CA up to and including the root, must be covered by a current CRL
of its issuer.  A CA without a CRL, or with an expired one, makes every signature under it invalid
("unable to get certificate CRL", "CRL has expired").  IGTF sites have a CRL for every CA because
fetch-crl keeps them current; a site that gives a bundle file must give the CRLs too (inside the
bundle or as ``crl_file``), or turn ``crl_check`` off knowingly.

``EndorserRegistry`` holds the site's trusted endorsers (name, certificate subject DN, issuer DN,
catalogue URLs) as they come from inventory variables, validated and with DNs in canonical form.
"""

from __future__ import annotations

import os
import re

from ansible_collections.vmic.fleet.plugins.module_utils.dn import canonical_dn
from ansible_collections.vmic.fleet.plugins.module_utils.errors import TrustError, VmicError

# A CA bundle with every IGTF CA and its CRLs is a few MB; this bounds the scan for CRL markers.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
MAX_ENDORSERS = 1000
MAX_ENDORSER_NAME = 128
MAX_URLS_PER_ENDORSER = 32
MAX_URL_LENGTH = 2048

ENDORSER_KEYS = ("name", "dn", "ca", "urls")

_CERT_FILE = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
_CRL_FILE = re.compile(r"^[0-9a-f]{8}\.r[0-9]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^\s\x00-\x1f\x7f]+$")


def _file_has_marker(path, marker, what):
    """True when the PEM file ``path`` contains ``marker`` (read in chunks, bounded)."""
    seen = 0
    tail = b""
    try:
        with open(path, "rb") as handle:
            while seen < MAX_BUNDLE_BYTES:
                chunk = handle.read(1024 * 1024)
                if not chunk:
                    return False
                seen += len(chunk)
                if marker in tail + chunk:
                    return True
                tail = chunk[-len(marker):]
    except (IOError, OSError) as exc:
        raise TrustError("%s %s: cannot be read: %s" % (what, path, exc.strerror or exc))
    raise TrustError("%s %s: larger than the limit of %d bytes" % (what, path, MAX_BUNDLE_BYTES))


def _read_bounded(path, what):
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_BUNDLE_BYTES + 1)
    except (IOError, OSError) as exc:
        raise TrustError("%s %s: cannot be read: %s" % (what, path, exc.strerror or exc))
    if len(data) > MAX_BUNDLE_BYTES:
        raise TrustError("%s %s: larger than the limit of %d bytes" % (what, path, MAX_BUNDLE_BYTES))
    return data


class TrustStore(object):
    """The CAs a host trusts, and how ``openssl`` is told about them.

    Give exactly one of ``ca_path`` (a directory in IGTF / OpenSSL hashed layout) or ``ca_file``
    (a PEM bundle of CA certificates, optionally with CRLs).  ``crl_file`` adds a PEM file of CRLs
    (useful with ``ca_file``).  ``crl_check`` demands a current CRL for every CA of a chain.
    Problems that would make every verification fail (missing paths, a directory without
    certificates, CRL checking without any CRL) raise :class:`TrustError` here, at construction,
    instead of showing up later as a misleading verdict on each list.
    """

    def __init__(self, ca_path=None, ca_file=None, crl_file=None, crl_check=True):
        if (ca_path is None) == (ca_file is None):
            raise TrustError("trust anchors: give exactly one of ca_path (a CA directory) or ca_file (a CA bundle)")
        self.ca_path = None
        self.ca_file = None
        self.crl_file = None
        self.crl_check = bool(crl_check)
        has_crls = False
        if ca_path is not None:
            self.ca_path = os.path.abspath(self._text(ca_path, "ca_path"))
            has_crls = self._check_ca_dir(self.ca_path)
        else:
            self.ca_file = os.path.abspath(self._text(ca_file, "ca_file"))
            self._check_regular_file(self.ca_file, "CA bundle")
            if not _file_has_marker(self.ca_file, b"-----BEGIN CERTIFICATE-----", "CA bundle"):
                raise TrustError("CA bundle %s: holds no PEM certificate" % self.ca_file)
            has_crls = _file_has_marker(self.ca_file, b"-----BEGIN X509 CRL-----", "CA bundle")
        if crl_file is not None:
            self.crl_file = os.path.abspath(self._text(crl_file, "crl_file"))
            self._check_regular_file(self.crl_file, "CRL file")
            if not _file_has_marker(self.crl_file, b"-----BEGIN X509 CRL-----", "CRL file"):
                raise TrustError("CRL file %s: holds no PEM CRL" % self.crl_file)
            has_crls = True
        if self.crl_check and not has_crls:
            raise TrustError("%s: CRL checking is on but there is no CRL (<hash>.r0 files from fetch-crl, CRLs in the bundle, "
                             "or crl_file); every signature would be refused. Install the CRLs or set crl_check to false"
                             % self.describe())

    @staticmethod
    def _text(value, name):
        if not isinstance(value, str) or not value.strip():
            raise TrustError("trust anchors: %s must be a non-empty path, got %r" % (name, value))
        return value

    @staticmethod
    def _check_regular_file(path, what):
        if not os.path.exists(path):
            raise TrustError("%s %s: does not exist" % (what, path))
        if not os.path.isfile(path):
            raise TrustError("%s %s: not a regular file" % (what, path))
        if not os.access(path, os.R_OK):
            raise TrustError("%s %s: not readable" % (what, path))

    @staticmethod
    def _check_ca_dir(path):
        """Validate an IGTF-layout directory; return True when it holds CRLs."""
        if not os.path.exists(path):
            raise TrustError("CA directory %s: does not exist" % path)
        if not os.path.isdir(path):
            raise TrustError("CA directory %s: not a directory" % path)
        try:
            names = os.listdir(path)
        except OSError as exc:
            raise TrustError("CA directory %s: cannot be listed: %s" % (path, exc.strerror or exc))
        if not any(_CERT_FILE.match(name) for name in names):
            raise TrustError("CA directory %s: holds no <hash>.0 certificate (not an IGTF / OpenSSL hashed CA directory; "
                             "run openssl rehash or install the IGTF trust anchors)" % path)
        return any(_CRL_FILE.match(name) for name in names)

    def openssl_args(self, workdir=None):
        """The argv fragment that makes ``openssl cms|smime -verify`` trust exactly these anchors.

        ``openssl cms`` and ``openssl smime`` have no ``-CRLfile`` option, but read CRLs from the
        ``-CAfile`` PEM file: with a CA directory, ``crl_file`` is given as ``-CAfile``; with a CA
        bundle and a ``crl_file``, both are joined into ``trust-anchors.pem`` in ``workdir`` (a
        private directory of the caller, required in that case).
        """
        if self.ca_path is not None:
            # -no-CAfile / -no-CAstore: without them OpenSSL also trusts its default bundle (the web PKI).
            if self.crl_file is not None:
                args = ["-CApath", self.ca_path, "-CAfile", self.crl_file, "-no-CAstore"]
            else:
                args = ["-CApath", self.ca_path, "-no-CAfile", "-no-CAstore"]
        elif self.crl_file is not None:
            if workdir is None:
                raise TrustError("%s: a work directory is needed to join the CA bundle and the CRL file" % self.describe())
            joined = os.path.join(workdir, "trust-anchors.pem")
            with open(joined, "wb") as out:
                for path in (self.ca_file, self.crl_file):
                    out.write(_read_bounded(path, "CA bundle" if path == self.ca_file else "CRL file"))
                    out.write(b"\n")
            args = ["-CAfile", joined, "-no-CApath", "-no-CAstore"]
        else:
            args = ["-CAfile", self.ca_file, "-no-CApath", "-no-CAstore"]
        if self.crl_check:
            args.append("-crl_check_all")
        return args

    def describe(self):
        """A short description for messages."""
        if self.ca_path is not None:
            where = "CA directory %s" % self.ca_path
        else:
            where = "CA bundle %s" % self.ca_file
        if self.crl_file is not None:
            where += " with CRL file %s" % self.crl_file
        return "%s (CRL check %s)" % (where, "on" if self.crl_check else "off")

    def __repr__(self):
        return "TrustStore(%s)" % self.describe()


class Endorser(object):
    """A trusted endorser: a name, the subject and issuer DN of its certificate, its catalogue URLs."""

    __slots__ = ("name", "dn", "ca", "urls")

    def __init__(self, name, dn, ca, urls=()):
        self.name = name
        self.dn = canonical_dn(dn)
        self.ca = canonical_dn(ca)
        self.urls = tuple(urls)

    def to_dict(self):
        """Plain data for module results."""
        return {"name": self.name, "dn": self.dn, "ca": self.ca, "urls": list(self.urls)}

    def __eq__(self, other):
        if not isinstance(other, Endorser):
            return NotImplemented
        return (self.name, self.dn, self.ca, self.urls) == (other.name, other.dn, other.ca, other.urls)

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash((self.name, self.dn, self.ca, self.urls))

    def __repr__(self):
        return "Endorser(%r, %r, %r, %r)" % (self.name, self.dn, self.ca, self.urls)


def _endorser_from_entry(index, entry):
    where = "endorser %d" % (index + 1)
    if not isinstance(entry, dict):
        raise TrustError("%s: must be a mapping with name, dn, ca and optional urls, got %s" % (where, type(entry).__name__))
    unknown = sorted(str(key) for key in entry if key not in ENDORSER_KEYS)
    if unknown:
        raise TrustError("%s: unknown keys %s (allowed: %s)" % (where, ", ".join(unknown), ", ".join(ENDORSER_KEYS)))
    for key in ("name", "dn", "ca"):
        if key not in entry or entry[key] is None:
            raise TrustError("%s: %s is missing" % (where, key))
        if not isinstance(entry[key], str):
            raise TrustError("%s: %s must be a string, got %s" % (where, key, type(entry[key]).__name__))
    name = entry["name"]
    if len(name) > MAX_ENDORSER_NAME or not _NAME.match(name):
        raise TrustError("%s: name %r must be 1 to %d characters of letters, digits, '.', '_' or '-', starting with a letter or digit"
                         % (where, name[:MAX_ENDORSER_NAME + 10], MAX_ENDORSER_NAME))
    where = "endorser %s" % name
    urls = entry.get("urls")
    if urls is None:
        urls = []
    if not isinstance(urls, (list, tuple)):
        raise TrustError("%s: urls must be a list of URLs, got %s" % (where, type(urls).__name__))
    if len(urls) > MAX_URLS_PER_ENDORSER:
        raise TrustError("%s: %d urls, more than the limit of %d" % (where, len(urls), MAX_URLS_PER_ENDORSER))
    for url in urls:
        if not isinstance(url, str):
            raise TrustError("%s: url %r is not a string" % (where, url))
        if len(url) > MAX_URL_LENGTH or not _URL.match(url):
            raise TrustError("%s: url %r is not an absolute URL (scheme://..., at most %d characters, no spaces)"
                             % (where, url[:MAX_URL_LENGTH], MAX_URL_LENGTH))
    if len(set(urls)) != len(urls):
        raise TrustError("%s: urls lists the same URL twice" % where)
    try:
        return Endorser(name, entry["dn"], entry["ca"], urls)
    except VmicError as exc:
        raise TrustError("%s: %s" % (where, exc))


class EndorserRegistry(object):
    """The endorsers a site trusts, built from inventory data.

    ``entries`` is a list of mappings ``{name, dn, ca, urls?}``; DNs may be in OpenSSL one-line or
    RFC 4514 form.  Names must be unique, and so must (dn, ca) pairs and catalogue URLs, so that a
    signer maps to at most one endorser and a catalogue to at most one signer.
    """

    def __init__(self, entries):
        if entries is None:
            entries = []
        if not isinstance(entries, (list, tuple)):
            raise TrustError("endorsers: must be a list of mappings, got %s" % type(entries).__name__)
        if len(entries) > MAX_ENDORSERS:
            raise TrustError("endorsers: %d entries, more than the limit of %d" % (len(entries), MAX_ENDORSERS))
        self._endorsers = []
        self._by_name = {}
        self._by_identity = {}
        url_owner = {}
        for index, entry in enumerate(entries):
            endorser = _endorser_from_entry(index, entry)
            if endorser.name in self._by_name:
                raise TrustError("endorsers: name %s is used twice" % endorser.name)
            identity = (endorser.dn, endorser.ca)
            if identity in self._by_identity:
                raise TrustError("endorsers: %s and %s have the same dn %s and ca %s"
                                 % (self._by_identity[identity].name, endorser.name, endorser.dn, endorser.ca))
            for url in endorser.urls:
                if url in url_owner:
                    raise TrustError("endorsers: catalogue %s is listed for both %s and %s" % (url, url_owner[url], endorser.name))
                url_owner[url] = endorser.name
            self._endorsers.append(endorser)
            self._by_name[endorser.name] = endorser
            self._by_identity[identity] = endorser

    def match(self, signer_dn, issuer_dn):
        """The endorser whose dn and ca are the signer's subject and issuer DN, or None."""
        try:
            key = (canonical_dn(signer_dn), canonical_dn(issuer_dn))
        except VmicError:
            return None
        return self._by_identity.get(key)

    def by_name(self, name):
        """The endorser called ``name``; TrustError when there is none."""
        endorser = self._by_name.get(name)
        if endorser is None:
            known = ", ".join(sorted(self._by_name)) or "none"
            raise TrustError("endorser %s is not in the registry (known: %s)" % (name, known))
        return endorser

    def names(self):
        """Endorser names, in the order given."""
        return [endorser.name for endorser in self._endorsers]

    def to_list(self):
        """Plain data for module results."""
        return [endorser.to_dict() for endorser in self._endorsers]

    def __contains__(self, name):
        return name in self._by_name

    def __iter__(self):
        return iter(list(self._endorsers))

    def __len__(self):
        return len(self._endorsers)

    def __repr__(self):
        return "EndorserRegistry(%s)" % ", ".join(self.names())
