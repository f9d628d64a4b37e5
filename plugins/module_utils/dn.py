# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One canonical form for X.509 distinguished names.

The canonical form is OpenSSL's one-line form as grid tools print it:
``/DC=org/DC=example/O=Example/CN=Some Endorser``, attributes in certificate (DER) order,
attribute names in their usual short form. Both image lists (``hv:dn``, ``hv:ca``) and
site configuration may give DNs in that form or in RFC 4514 form (``CN=x,O=y,C=z``, reverse order);
both are brought to the canonical form before any comparison.
"""

from __future__ import annotations

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

_SLASH_ATTR = re.compile(r"/(?=[A-Za-z][A-Za-z0-9.]*=)")


class DNError(VmicError):
    """A distinguished name could not be parsed."""


def _canonical_attribute(name, dn):
    key = name.strip()
    canonical = _ATTRIBUTE_NAMES.get(key.lower())
    if canonical is None:
        if re.match(r"^[0-9]+(\.[0-9]+)+$", key):
            return key
        raise DNError("distinguished name %r: unknown attribute %r" % (dn, key))
    return canonical


def _split_rfc4514(dn):
    """Split an RFC 4514 string on unescaped commas."""
    parts, current, escaped = [], [], False
    for char in dn:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            current.append(char)
            escaped = True
        elif char in ",;":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def _unescape_rfc4514(value):
    out, i = [], 0
    while i < len(value):
        if value[i] == "\\" and i + 1 < len(value):
            nxt = value[i + 1:i + 3]
            if re.match(r"^[0-9A-Fa-f]{2}$", nxt):
                out.append(chr(int(nxt, 16)))
                i += 3
                continue
            out.append(value[i + 1])
            i += 2
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def canonical_dn(dn):
    """Return the canonical one-line form of ``dn`` (a string in one-line or RFC 4514 form)."""
    if not isinstance(dn, str):
        raise DNError("distinguished name %r: not a string" % (dn,))
    text = dn.strip()
    if not text:
        raise DNError("distinguished name is empty")
    if len(text) > MAX_DN_LENGTH:
        raise DNError("distinguished name longer than %d characters" % MAX_DN_LENGTH)
    pairs = []
    if text.startswith("/"):
        for part in _SLASH_ATTR.split(text)[1:]:
            if "=" not in part:
                raise DNError("distinguished name %r: component %r has no '='" % (dn, part))
            name, value = part.split("=", 1)
            pairs.append((_canonical_attribute(name, dn), value.strip()))
    else:
        for part in reversed(_split_rfc4514(text)):
            if "=" not in part:
                raise DNError("distinguished name %r: component %r has no '='" % (dn, part))
            name, value = part.split("=", 1)
            pairs.append((_canonical_attribute(name, dn), _unescape_rfc4514(value.strip())))
    if not pairs:
        raise DNError("distinguished name %r: no attributes" % (dn,))
    for name, value in pairs:
        if not value:
            raise DNError("distinguished name %r: attribute %s is empty" % (dn, name))
    return "".join("/%s=%s" % pair for pair in pairs)


def dn_from_x509_name(name):
    """Canonical one-line form of a ``cryptography.x509.Name``, in DER order."""
    pairs = []
    for rdn in name.rdns:
        for attribute in rdn:
            oid = attribute.oid.dotted_string
            short = _ATTRIBUTE_NAMES.get(oid, oid)
            pairs.append("/%s=%s" % (short, attribute.value))
    return "".join(pairs)


def same_dn(left, right):
    """True when two DN strings name the same subject after canonicalisation."""
    return canonical_dn(left) == canonical_dn(right)
