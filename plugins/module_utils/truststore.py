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

These CRLs are the only ones that judge revocation: ``smime.verify_detached`` checks the chain a
second time with ``openssl verify`` and :meth:`TrustStore.openssl_verify_args`, so that a CRL carried
inside a signed envelope never stands in for the site's.

CA pinning.  :meth:`TrustStore.anchor_certificates` reads the anchors (``<hash>.N`` files or the
bundle's certificates, bounded) with their sha256 fingerprints; an endorser is bound to one of them
(its ``ca_fingerprint``, or else the only anchor whose subject is its ``ca``).  IGTF namespace
policies of a CA directory are honoured as vmcatcher and Globus do (:class:`CAPolicy`):
``<hash>.namespaces`` (EUGridPMA EACL, preferred) or ``<hash>.signing_policy`` (Globus) of the CA
with subject hash ``<hash>`` say which subjects it may sign; a certificate issued by that CA with
another subject is refused, naming the CA, the subject and the file.  Deny wins; a file that cannot
be read or parsed permits nothing.

``EndorserRegistry`` holds the site's trusted endorsers (name, certificate subject DN, issuer DN,
catalogue URLs, optional ``ca_fingerprint`` and ``description``) as they come from inventory
variables, validated; DNs are kept as X.509 name structures (dn.DistinguishedName) and compared as
such, with one-line display strings for messages.
"""

from __future__ import annotations

import os
import re

from ansible_collections.vmic.fleet.plugins.module_utils.dn import parse_dn
from ansible_collections.vmic.fleet.plugins.module_utils.errors import TrustError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import ENDORSER_NAME_RE, HEX64_RE, MAX_ENDORSER_NAME
from ansible_collections.vmic.fleet.plugins.module_utils.smime import certificate_facts

# A CA bundle with every IGTF CA and its CRLs is a few MB; this bounds the scan for CRL markers.
MAX_BUNDLE_BYTES = 256 * 1024 * 1024
MAX_ENDORSERS = 1000
MAX_URLS_PER_ENDORSER = 32
MAX_URL_LENGTH = 2048

ENDORSER_KEYS = ("name", "dn", "ca", "urls", "ca_fingerprint", "description")
MAX_DESCRIPTION = 1024
# Trust anchors read for CA pinning: an IGTF directory holds a few hundred; each file is one certificate.
MAX_ANCHORS = 4096
MAX_ANCHOR_FILE_BYTES = 1024 * 1024
MAX_POLICY_BYTES = 256 * 1024
MAX_POLICY_ENTRIES = 1000

_CERT_FILE = re.compile(r"^[0-9a-f]{8}\.[0-9]+$")
_CRL_FILE = re.compile(r"^[0-9a-f]{8}\.r[0-9]+$")
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://[^\s\x00-\x1f\x7f]+$")
_HASH = re.compile(r"^[0-9a-f]{8}$")
_QUOTED = r'"((?:[^"\\]|\\.)*)"'
_NAMESPACE_ENTRY = re.compile(r"^TO\s+ISSUER\s+(?:%s|(SELF))\s+(PERMIT|DENY)\s+SUBJECT\s+%s$" % (_QUOTED, _QUOTED), re.I)
_POLICY_LINE = re.compile(r"^(access_id_CA|pos_rights|neg_rights|cond_subjects)\s+(\S+)\s+(.+)$", re.I)


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


def _read_bounded_to(path, limit, what):
    try:
        with open(path, "rb") as handle:
            data = handle.read(limit + 1)
    except (IOError, OSError) as exc:
        raise TrustError("%s %s: cannot be read: %s" % (what, path, exc.strerror or exc))
    if len(data) > limit:
        raise TrustError("%s %s: larger than the limit of %d bytes" % (what, path, limit))
    return data


def _read_bounded(path, what):
    return _read_bounded_to(path, MAX_BUNDLE_BYTES, what)


class AnchorCertificate(object):
    """A CA certificate of the trust store: ``pem``, ``name`` / ``issuer_name`` (DistinguishedName),
    ``fingerprint`` (sha256 of the DER, lower-case hex), ``path`` and, in a CA directory, ``hash``
    (the ``<hash>`` of its ``<hash>.N`` file)."""

    __slots__ = ("path", "hash", "pem", "name", "issuer_name", "fingerprint")

    def __init__(self, path, file_hash, pem, name, issuer_name, fingerprint):
        self.path = path
        self.hash = file_hash
        self.pem = pem
        self.name = name
        self.issuer_name = issuer_name
        self.fingerprint = fingerprint

    def describe(self):
        """``<subject> (sha256 <fingerprint>, <file>)`` for messages."""
        return "%s (sha256 %s, %s)" % (self.name, self.fingerprint, self.path)

    def __repr__(self):
        return "AnchorCertificate(%s)" % self.describe()


def _strip_policy_comment(line):
    """``line`` without its ``#`` comment (a ``#`` inside quotes or after a backslash is text)."""
    quote, escaped = None, False
    for index, char in enumerate(line):
        if escaped:
            escaped = False
        elif char == "\\":
            escaped = True
        elif quote:
            if char == quote:
                quote = None
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:index]
    return line


def _policy_entries(text):
    """Logical lines of a policy file: comments removed, backslash continuations joined."""
    entries, current = [], ""
    for raw in text.splitlines():
        line = _strip_policy_comment(raw).rstrip()
        if line.endswith("\\") and not line.endswith("\\\\"):
            current += line[:-1] + " "
            continue
        current = (current + line).strip()
        if current:
            entries.append(current)
        current = ""
    if current.strip():
        entries.append(current.strip())
    return entries


def _unquote(text):
    return re.sub(r"\\(.)", r"\1", text)


def _glob_regex(glob):
    """A Globus ``cond_subjects`` glob as a regular expression (``*`` any text, ``?`` one character)."""
    return "".join(".*" if char == "*" else "." if char == "?" else re.escape(char) for char in glob)


class CAPolicy(object):
    """The IGTF namespace policy of a CA: which subjects the CA(s) of one ``<hash>`` may sign.

    Read from ``<hash>.namespaces`` (EUGridPMA EACL: ``TO Issuer "<dn>"|SELF PERMIT|DENY Subject
    "<regex>"``), or, when there is none, from ``<hash>.signing_policy`` (Globus: ``access_id_CA X509
    '<dn>'``, ``pos_rights globus CA:sign``, ``cond_subjects globus '"<glob>" ...'``).  A subject is
    permitted when a permitting rule for its issuer matches the whole one-line subject and no DENY
    rule does (deny wins; a DENY matches regardless of case).  A file that cannot be read or parsed
    permits nothing (fail closed).
    """

    def __init__(self, path, kind, file_hash):
        self.path = path
        self.kind = kind
        self.hash = file_hash
        self.rules = []      # (issuer DistinguishedName or None for SELF, permit, compiled regex, entry number)
        self.error = None
        try:
            data = _read_bounded_to(path, MAX_POLICY_BYTES, "CA policy file")
            text = data.decode("utf-8")
            entries = _policy_entries(text)
            if len(entries) > MAX_POLICY_ENTRIES:
                raise TrustError("CA policy file %s: more than %d entries" % (path, MAX_POLICY_ENTRIES))
            if kind == "namespaces":
                self._parse_namespaces(entries)
            else:
                self._parse_signing_policy(entries)
        except (TrustError, ValueError, re.error) as exc:
            self.error = str(exc)

    def _parse_namespaces(self, entries):
        for number, entry in enumerate(entries, 1):
            match = _NAMESPACE_ENTRY.match(entry)
            if not match:
                raise TrustError("CA policy file %s: entry %d is not 'TO Issuer \"<dn>\" PERMIT|DENY Subject \"<regex>\"': %r"
                                 % (self.path, number, entry[:200]))
            issuer = None if match.group(2) else parse_dn(_unquote(match.group(1)))
            permit = match.group(3).upper() == "PERMIT"
            flags = 0 if permit else re.I
            self.rules.append((issuer, permit, re.compile(_unquote(match.group(4)), flags), number))

    def _parse_signing_policy(self, entries):
        block = None
        for number, entry in enumerate(entries, 1):
            match = _POLICY_LINE.match(entry)
            if not match:
                raise TrustError("CA policy file %s: entry %d is not access_id_CA, pos_rights, neg_rights or cond_subjects: %r"
                                 % (self.path, number, entry[:200]))
            key, value = match.group(1).lower(), match.group(3).strip()
            if key == "access_id_ca":
                self._add_block(block)
                block = {"issuer": parse_dn(value.strip("'")), "sign": False, "subjects": [], "number": number}
            elif block is None:
                raise TrustError("CA policy file %s: entry %d comes before access_id_CA" % (self.path, number))
            elif key == "pos_rights":
                block["sign"] = block["sign"] or "CA:sign" in value.split()
            elif key == "cond_subjects":
                block["subjects"].extend(re.findall(r'"([^"]*)"', value.strip("'")))
        self._add_block(block)

    def _add_block(self, block):
        if block is not None and block["sign"]:
            for glob in block["subjects"]:
                self.rules.append((block["issuer"], True, re.compile(_glob_regex(glob)), block["number"]))

    def refusal(self, subject, issuer):
        """None when the CA ``issuer`` may sign ``subject`` (both DistinguishedName), else the reason."""
        where = "%s %s" % (self.kind, self.path)
        if self.error is not None:
            return "CA %s may sign nothing here: its %s cannot be used (%s)" % (issuer, where, self.error)
        text = str(subject)
        permitted = False
        for rule_issuer, permit, pattern, number in self.rules:
            if rule_issuer is not None and rule_issuer != issuer:
                continue
            if pattern.fullmatch(text):
                if not permit:
                    return "CA %s may not sign subject %s (denied by entry %d of %s)" % (issuer, text, number, where)
                permitted = True
        if not permitted:
            return "CA %s may not sign subject %s (no entry of %s permits it)" % (issuer, text, where)
        return None


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
        self._anchors = None
        self._policies = {}
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

    def openssl_verify_args(self, workdir=None):
        """The argv fragment for ``openssl verify`` with exactly these anchors and CRLs (``-CRLfile`` for ``crl_file``).

        Nothing else is trusted (no default locations); with ``crl_check``, ``-crl_check_all``.
        """
        if self.ca_path is not None:
            args = ["-CApath", self.ca_path, "-no-CAfile", "-no-CAstore"]
        else:
            args = ["-CAfile", self.ca_file, "-no-CApath", "-no-CAstore"]
        if self.crl_file is not None:
            args.extend(["-CRLfile", self.crl_file])
        if self.crl_check:
            args.append("-crl_check_all")
        return args

    def anchor_certificates(self):
        """The CA certificates of the store (:class:`AnchorCertificate`), read once.

        A CA directory gives its ``<hash>.N`` files (at most MAX_ANCHORS, each at most
        MAX_ANCHOR_FILE_BYTES); a bundle its certificates.  TrustError when they cannot be read.
        """
        if self._anchors is not None:
            return self._anchors
        anchors = []
        if self.ca_path is not None:
            try:
                names = sorted(name for name in os.listdir(self.ca_path) if _CERT_FILE.match(name))
            except OSError as exc:
                raise TrustError("CA directory %s: cannot be listed: %s" % (self.ca_path, exc.strerror or exc))
            if len(names) > MAX_ANCHORS:
                raise TrustError("CA directory %s: %d certificates, more than the limit of %d" % (self.ca_path, len(names), MAX_ANCHORS))
            for name in names:
                path = os.path.join(self.ca_path, name)
                for facts in certificate_facts(_read_bounded_to(path, MAX_ANCHOR_FILE_BYTES, "CA certificate")):
                    anchors.append(AnchorCertificate(path, name.split(".", 1)[0], *facts))
        else:
            for facts in certificate_facts(_read_bounded(self.ca_file, "CA bundle")):
                anchors.append(AnchorCertificate(self.ca_file, None, *facts))
                if len(anchors) > MAX_ANCHORS:
                    raise TrustError("CA bundle %s: more than %d certificates" % (self.ca_file, MAX_ANCHORS))
        self._anchors = tuple(anchors)
        return self._anchors

    def anchors_named(self, name):
        """The anchor certificates whose subject is ``name`` (a DistinguishedName or DN string), one per fingerprint."""
        wanted = parse_dn(name)
        found = {}
        for anchor in self.anchor_certificates():
            if anchor.name == wanted:
                found.setdefault(anchor.fingerprint, anchor)
        return list(found.values())

    def anchor_with_fingerprint(self, fingerprint):
        """The anchor certificate whose sha256 fingerprint is ``fingerprint`` (hex, colons allowed), or None."""
        wanted = normalise_fingerprint(fingerprint, "trust anchors")
        for anchor in self.anchor_certificates():
            if anchor.fingerprint == wanted:
                return anchor
        return None

    def ca_policy(self, issuer_hash):
        """The IGTF namespace policy (:class:`CAPolicy`) of the CA(s) with subject hash ``issuer_hash``, or None.

        Only a CA directory has policies: ``<hash>.namespaces``, else ``<hash>.signing_policy``.
        """
        if self.ca_path is None or not isinstance(issuer_hash, str) or not _HASH.match(issuer_hash):
            return None
        if issuer_hash not in self._policies:
            policy = None
            for kind in ("namespaces", "signing_policy"):
                path = os.path.join(self.ca_path, "%s.%s" % (issuer_hash, kind))
                if os.path.lexists(path):
                    policy = CAPolicy(path, kind, issuer_hash)
                    break
            self._policies[issuer_hash] = policy
        return self._policies[issuer_hash]

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


def normalise_fingerprint(value, where):
    """A sha256 fingerprint as 64 lower-case hex digits; colons, spaces and case are allowed in ``value``."""
    if not isinstance(value, str):
        raise TrustError("%s: ca_fingerprint must be a string, got %s" % (where, type(value).__name__))
    text = value.strip().lower().replace(":", "").replace(" ", "")
    if not HEX64_RE.fullmatch(text):
        raise TrustError("%s: ca_fingerprint %r is not a sha256 fingerprint (64 hex digits, colons allowed)" % (where, value[:200]))
    return text


class Endorser(object):
    """A trusted endorser: a name, the subject and issuer DN of its certificate, its catalogue URLs.

    ``dn`` / ``ca`` are the one-line display strings; ``dn_name`` / ``ca_name`` the
    :class:`~dn.DistinguishedName` structures every comparison uses.  ``ca_fingerprint`` (lower-case
    hex sha256 of the issuing CA certificate's DER, or None) pins the endorser to that CA certificate;
    without it the pin is the one trust anchor whose subject is ``ca`` (see
    ``smime.verify_endorser_binding``).
    """

    __slots__ = ("name", "dn", "ca", "urls", "dn_name", "ca_name", "ca_fingerprint", "description")

    def __init__(self, name, dn, ca, urls=(), ca_fingerprint=None, description=None):
        self.name = name
        self.dn_name = parse_dn(dn)
        self.ca_name = parse_dn(ca)
        self.dn = str(self.dn_name)
        self.ca = str(self.ca_name)
        self.urls = tuple(urls)
        self.ca_fingerprint = None if ca_fingerprint is None else normalise_fingerprint(ca_fingerprint, "endorser %s" % name)
        self.description = description

    def _key(self):
        return (self.name, self.dn_name, self.ca_name, self.urls, self.ca_fingerprint, self.description)

    def to_dict(self):
        """Plain data for module results."""
        return {"name": self.name, "dn": self.dn, "ca": self.ca, "urls": list(self.urls), "ca_fingerprint": self.ca_fingerprint,
                "description": self.description}

    def __eq__(self, other):
        if not isinstance(other, Endorser):
            return NotImplemented
        return self._key() == other._key()

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(self._key())

    def __repr__(self):
        return "Endorser(%r, %r, %r, %r, ca_fingerprint=%r)" % (self.name, self.dn, self.ca, self.urls, self.ca_fingerprint)


def _endorser_from_entry(index, entry):
    where = "endorser %d" % (index + 1)
    if not isinstance(entry, dict):
        raise TrustError("%s: must be a mapping with name, dn, ca and optional urls, ca_fingerprint, description, got %s"
                         % (where, type(entry).__name__))
    unknown = sorted(str(key) for key in entry if key not in ENDORSER_KEYS)
    if unknown:
        raise TrustError("%s: unknown keys %s (allowed: %s)" % (where, ", ".join(unknown), ", ".join(ENDORSER_KEYS)))
    for key in ("name", "dn", "ca"):
        if key not in entry or entry[key] is None:
            raise TrustError("%s: %s is missing" % (where, key))
        if not isinstance(entry[key], str):
            raise TrustError("%s: %s must be a string, got %s" % (where, key, type(entry[key]).__name__))
    name = entry["name"]
    if not ENDORSER_NAME_RE.fullmatch(name):
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
    description = entry.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_DESCRIPTION):
        raise TrustError("%s: description must be a string of at most %d characters" % (where, MAX_DESCRIPTION))
    fingerprint = entry.get("ca_fingerprint")
    if fingerprint is not None:
        fingerprint = normalise_fingerprint(fingerprint, where)
    try:
        return Endorser(name, entry["dn"], entry["ca"], urls, ca_fingerprint=fingerprint, description=description)
    except VmicError as exc:
        raise TrustError("%s: %s" % (where, exc))


class EndorserRegistry(object):
    """The endorsers a site trusts, built from inventory data.

    ``entries`` is a list of mappings ``{name, dn, ca, urls?, ca_fingerprint?, description?}``; DNs may
    be in OpenSSL one-line or RFC 4514 form.  Names must be unique, and so must (dn, ca) pairs
    (compared as X.509 names) and catalogue URLs, so that a signer maps to at most one endorser and a
    catalogue to at most one signer.
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
            identity = (endorser.dn_name, endorser.ca_name)
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

    def match(self, signer, issuer):
        """The endorser whose dn and ca are the signer's subject and issuer name, or None.

        ``signer`` / ``issuer`` are :class:`~dn.DistinguishedName` objects (``SignatureVerdict.signer_name``
        / ``issuer_name``, from the certificate) or DN strings, which are parsed; names are compared
        as X.509 names.  Give the structures of a certificate, not its display strings: the one-line
        display form of a name with ``/`` or ``+`` in a value is ambiguous.
        """
        try:
            key = (parse_dn(signer), parse_dn(issuer))
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
