# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""X.509 distinguished names, compared as names, never as strings.

:class:`DistinguishedName` is the structure of a name: a sequence of RDNs in certificate (DER)
order, each RDN a set of (attribute, value) pairs (several in a multi-valued RDN such as
``CN=a+UID=x``).  Two names are the same only when that structure is the same: the same number of
RDNs, in the same order, each with the same attributes and values.  Attribute names are brought to
their usual short form (``commonName`` and ``2.5.4.3`` are ``CN``); values are compared exactly,
after the surrounding spaces of text input are removed.

Text comes in two forms, both read by :func:`parse_dn`:

- the one-line form grid tools print (``/DC=org/DC=example/O=Example/CN=Some Endorser``, DER
  order; a ``+`` followed by a known attribute name and ``=`` starts another attribute of the same
  RDN, as OpenSSL prints multi-valued RDNs);
- RFC 4514 (``CN=x,O=y,C=z``, reverse order, ``\\``-escapes, ``+`` between the attributes of a
  multi-valued RDN).

The one-line form is what :func:`str` gives and what messages show, but it is not injective: a CN
that contains ``/CN=`` prints like two RDNs, and ``CN=a+UID=x`` nearly like ``CN=a/UID=x``.  So it is
for display only; every comparison (:func:`same_dn`, the endorser registry, ``hv:dn`` against the
signer certificate) uses the structure, from :func:`name_from_x509` for a certificate.
:func:`canonical_dn` and :func:`dn_from_x509_name` give the display string.
"""

from __future__ import annotations

import binascii
import re

from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError

MAX_DN_LENGTH = 1024

# Lower-cased attribute name (or OID) -> canonical short name.
_ATTRIBUTE_NAMES = {
    "c": "C", "countryname": "C", "2.5.4.6": "C",
    "st": "ST", "s": "ST", "stateorprovincename": "ST", "2.5.4.8": "ST",
    "l": "L", "localityname": "L", "2.5.4.7": "L",
    "o": "O", "organizationname": "O", "2.5.4.10": "O",
    "ou": "OU", "organizationalunitname": "OU", "2.5.4.11": "OU",
    "cn": "CN", "commonname": "CN", "2.5.4.3": "CN",
    "dc": "DC", "domaincomponent": "DC", "0.9.2342.19200300.100.1.25": "DC",
    "emailaddress": "emailAddress", "email": "emailAddress", "e": "emailAddress",
    "1.2.840.113549.1.9.1": "emailAddress",
    "uid": "UID", "userid": "UID", "0.9.2342.19200300.100.1.1": "UID",
    "serialnumber": "serialNumber", "2.5.4.5": "serialNumber",
    "title": "title", "2.5.4.12": "title",
    "sn": "SN", "surname": "SN", "2.5.4.4": "SN",
    "gn": "GN", "givenname": "GN", "2.5.4.42": "GN",
}

_OID = re.compile(r"^[0-9]+(\.[0-9]+)+$")
# One-line form: "/" starts an RDN when an attribute name (or OID) and "=" follow.
_SLASH_ATTR = re.compile(r"/(?=(?:[A-Za-z][A-Za-z0-9.]*|[0-9]+(?:\.[0-9]+)+)=)")
# One-line form: "+" starts another attribute of the same RDN only before a known attribute name.
_PLUS_ATTR = re.compile(r"\+(?=(?:%s)=)" % "|".join(sorted((re.escape(name) for name in _ATTRIBUTE_NAMES), key=len, reverse=True)),
                        re.I)


class DNError(VmicError):
    """A distinguished name could not be parsed."""


class DistinguishedName(object):
    """An X.509 name as a structure: ``rdns`` is a tuple of RDNs, each a sorted tuple of (attribute, value).

    Immutable and hashable; equality is structural.  ``str()`` is the one-line display form, which
    is never used for comparison (it is ambiguous).
    """

    __slots__ = ("_rdns",)

    def __init__(self, rdns):
        normalised = []
        for rdn in rdns:
            pairs = tuple(sorted((str(name), str(value)) for name, value in rdn))
            if not pairs:
                raise DNError("distinguished name: empty RDN")
            normalised.append(pairs)
        if not normalised:
            raise DNError("distinguished name: no attributes")
        object.__setattr__(self, "_rdns", tuple(normalised))

    def __setattr__(self, name, value):
        raise AttributeError("DistinguishedName is immutable")

    def __reduce__(self):
        # copy / deepcopy / pickle rebuild through __init__ (attribute assignment is refused).
        return (DistinguishedName, (self._rdns,))

    @property
    def rdns(self):
        """The RDNs in DER order, each a sorted tuple of (short attribute name, value)."""
        return self._rdns

    def __eq__(self, other):
        if not isinstance(other, DistinguishedName):
            return NotImplemented
        return self._rdns == other._rdns

    def __ne__(self, other):
        result = self.__eq__(other)
        return result if result is NotImplemented else not result

    def __hash__(self):
        return hash(self._rdns)

    def __str__(self):
        return "".join("/" + "+".join("%s=%s" % pair for pair in rdn) for rdn in self._rdns)

    def __repr__(self):
        return "DistinguishedName(%r)" % (self._rdns,)


def _canonical_attribute(name, dn):
    key = name.strip()
    canonical = _ATTRIBUTE_NAMES.get(key.lower())
    if canonical is None:
        if _OID.match(key):
            return key
        raise DNError("distinguished name %r: unknown attribute %r" % (dn, key))
    return canonical


def _split_unescaped(text, separators):
    """Split an RFC 4514 string on unescaped separator characters (escapes are kept)."""
    parts, current, escaped = [], [], False
    for char in text:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in separators:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape_rfc4514(value, dn):
    """RFC 4514 value: ``\\<char>`` and ``\\<hex><hex>`` escapes; hex escapes are UTF-8 bytes."""
    out, i = bytearray(), 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            pair = value[i + 1:i + 3]
            if re.match(r"^[0-9A-Fa-f]{2}$", pair):
                out.append(int(pair, 16))
                i += 3
                continue
            out.extend(value[i + 1].encode("utf-8"))
            i += 2
            continue
        out.extend(char.encode("utf-8"))
        i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise DNError("distinguished name %r: escaped value %r is not UTF-8" % (dn, value))


def _pair(part, dn, unescape):
    if "=" not in part:
        raise DNError("distinguished name %r: component %r has no '='" % (dn, part))
    name, value = part.split("=", 1)
    name = _canonical_attribute(name, dn)
    value = _unescape_rfc4514(value.strip(), dn) if unescape else value.strip()
    if not value:
        raise DNError("distinguished name %r: attribute %s is empty" % (dn, name))
    return name, value


def parse_dn(dn):
    """The :class:`DistinguishedName` of ``dn``, a string in one-line or RFC 4514 form (see the module doc).

    A DistinguishedName is returned as it is.  DNError names the problem.
    """
    if isinstance(dn, DistinguishedName):
        return dn
    if not isinstance(dn, str):
        raise DNError("distinguished name %r: not a string" % (dn,))
    text = dn.strip()
    if not text:
        raise DNError("distinguished name is empty")
    if len(text) > MAX_DN_LENGTH:
        raise DNError("distinguished name longer than %d characters" % MAX_DN_LENGTH)
    rdns = []
    if text.startswith("/"):
        for part in _SLASH_ATTR.split(text)[1:]:
            rdns.append([_pair(attribute, dn, False) for attribute in _PLUS_ATTR.split(part)])
    else:
        for part in reversed(_split_unescaped(text, ",;")):
            rdns.append([_pair(attribute, dn, True) for attribute in _split_unescaped(part, "+")])
    if not rdns:
        raise DNError("distinguished name %r: no attributes" % (dn,))
    return DistinguishedName(rdns)


def _attribute_value(value):
    # Bit strings (x500UniqueIdentifier) come as bytes: RFC 4514 writes them as '#' and hex.
    if isinstance(value, bytes):
        return "#" + binascii.hexlify(value).decode("ascii")
    return value


def name_from_x509(name):
    """The :class:`DistinguishedName` of a ``cryptography.x509.Name``, in DER order, multi-valued RDNs kept."""
    rdns = []
    for rdn in name.rdns:
        rdns.append([(_ATTRIBUTE_NAMES.get(attribute.oid.dotted_string, attribute.oid.dotted_string), _attribute_value(attribute.value))
                     for attribute in rdn])
    if not rdns:
        raise DNError("distinguished name: the certificate name is empty")
    return DistinguishedName(rdns)


def canonical_dn(dn):
    """The one-line display form of ``dn`` (one-line or RFC 4514 text); for display, never for comparison."""
    return str(parse_dn(dn))


def dn_from_x509_name(name):
    """The one-line display form of a ``cryptography.x509.Name`` (empty string for an empty name)."""
    if not list(name.rdns):
        return ""
    return str(name_from_x509(name))


def same_dn(left, right):
    """True when two DNs (strings or DistinguishedName) are the same X.509 name, compared structurally."""
    return parse_dn(left) == parse_dn(right)
