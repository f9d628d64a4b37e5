# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Detached S/MIME signatures (``multipart/signed``) for HEPiX image lists.

Signing uses the ``cryptography`` library.  Verification runs the ``openssl cms -verify`` command
(argv lists, a private temporary directory), so its verdicts are OpenSSL's, the same as
``openssl smime -verify`` that vmcatcher, atrope and cloudkeeper rely on: chain to the given trust
anchors only, validity, CRLs, the S/MIME signing purpose, and the signature over the content.

What is signed.  S/MIME signs the canonical form of the content, with CRLF line ends: readers
(``openssl smime -verify``, M2Crypto, Ruby's OpenSSL) turn each line end of the signed part into
CRLF before checking the digest.  :func:`sign_detached` therefore signs ``smime_canonical(content)``,
and that is what every consumer, and :func:`verify_detached`, gets back as the payload.  Content
without line ends, or with CRLF line ends already, comes back byte for byte.  (Signing the raw bytes
with ``PKCS7Options.Binary`` does not work: the envelope is still written with CRLF line ends, so
LF content would fail every reader's digest check.)

Revocation is judged by the site's CRLs only.  ``openssl cms -verify`` prefers a time-valid CRL
from the envelope's own ``crls`` field to those of the CA directory, so a revoked endorser (or a thief
of its key) could embed its CA's previous CRL.  After ``openssl cms -verify`` (the signature, the
chain), :func:`verify_detached` therefore runs ``openssl verify -crl_check_all`` on the signer
certificate with the trust store's anchors and CRLs only (``-CRLfile`` for ``crl_file``), the
envelope's certificates given as untrusted intermediates (``-untrusted``) and its CRLs never; both
must pass.  ``SignatureVerdict.revoked`` tells that the site's CRLs revoke the signer or a CA of its
chain, a definite signal (the list's images are withdrawn).

Who may sign for an endorser: :func:`verify_endorser_binding` checks that the signer certificate is
issued by the endorser's pinned CA certificate (by key, ``openssl verify -partial_chain`` with that
certificate as the only anchor) and that the IGTF namespace policy of the CA directory permits its
subject (see truststore).

A bad signature is a result (:class:`SignatureVerdict` with ``valid`` false and reasons), never an
exception; exceptions are for operator errors: a missing ``openssl`` command or ``cryptography``
library, an unreadable signing key, an unsupported option.
"""

from __future__ import annotations

import datetime
import os
import re
import shutil
import subprocess
import tempfile
import time

from ansible_collections.vmic.fleet.plugins.module_utils.crypto_dep import (
    ExtendedKeyUsageOID, UnsupportedAlgorithm, ec, hashes, pkcs7, require_cryptography, rsa, serialization, x509)
from ansible_collections.vmic.fleet.plugins.module_utils.dn import dn_from_x509_name, name_from_x509
from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError, SignatureError, TrustError, VmicError
from ansible_collections.vmic.fleet.plugins.module_utils.identifiers import MAX_ENVELOPE_BYTES

OPENSSL_TIMEOUT = 120
SIGNING_DIGESTS = ("sha256", "sha384", "sha512")
PURPOSES = ("smimesign", "any")

# Digest OIDs of a signerInfo -> names.  Accepted: SHA-2 and SHA-3.  Legacy: refused unless allowed.
_DIGEST_OIDS = {
    "1.2.840.113549.2.2": "md2",
    "1.2.840.113549.2.4": "md4",
    "1.2.840.113549.2.5": "md5",
    "1.3.14.3.2.26": "sha1",
    "1.3.36.3.2.1": "ripemd160",
    "2.16.840.1.101.3.4.2.1": "sha256",
    "2.16.840.1.101.3.4.2.2": "sha384",
    "2.16.840.1.101.3.4.2.3": "sha512",
    "2.16.840.1.101.3.4.2.4": "sha224",
    "2.16.840.1.101.3.4.2.5": "sha512-224",
    "2.16.840.1.101.3.4.2.6": "sha512-256",
    "2.16.840.1.101.3.4.2.7": "sha3-224",
    "2.16.840.1.101.3.4.2.8": "sha3-256",
    "2.16.840.1.101.3.4.2.9": "sha3-384",
    "2.16.840.1.101.3.4.2.10": "sha3-512",
}
ACCEPTED_DIGESTS = frozenset(("sha224", "sha256", "sha384", "sha512", "sha512-224", "sha512-256",
                              "sha3-224", "sha3-256", "sha3-384", "sha3-512"))
LEGACY_DIGESTS = frozenset(("sha1", "md5"))

NOT_SIGNED = "not an S/MIME signed message (unsigned?)"
MAX_HEADER_BYTES = 64 * 1024

_PURPOSE_HINT = ("the certificate may not sign S/MIME: key usage lacks digitalSignature/nonRepudiation "
                 "or extended key usage lacks emailProtection")
# X.509 verification errors (X509_verify_cert_error_string) -> the explanation an operator needs.
_CHAIN_HINTS = (
    ("unable to get local issuer certificate", "untrusted CA"),
    ("unable to get issuer certificate", "untrusted CA"),
    ("self-signed certificate in certificate chain", "the root CA is not a trust anchor"),
    ("self signed certificate in certificate chain", "the root CA is not a trust anchor"),
    ("self-signed certificate", "self-signed signer, not issued by a trusted CA"),
    ("self signed certificate", "self-signed signer, not issued by a trusted CA"),
    ("unable to get certificate crl", "CRL checking needs a current CRL of every CA in the chain: run fetch-crl"),
    ("crl has expired", "the CA's CRL is out of date: run fetch-crl"),
    ("crl is not yet valid", "the CA's CRL is not valid yet: check the clock"),
    ("unsupported certificate purpose", _PURPOSE_HINT),
    ("unsuitable certificate purpose", _PURPOSE_HINT),
)

_PEM_CERT = re.compile(b"-----BEGIN CERTIFICATE-----\r?\n.*?-----END CERTIFICATE-----", re.S)
_OPENSSL_ERROR = re.compile(r"^[0-9A-F]+:error:[0-9A-F]+:[^:]*:([^:]*):([^:]+):[^:]*:[0-9]+:(.*)$")
_HEADER_NAME = re.compile(b"^[!-9;-~]+$")


def find_openssl():
    """Path of the ``openssl`` command; MissingDependencyError when it is not installed."""
    path = shutil.which("openssl")
    if path is None:
        raise MissingDependencyError("the openssl command is needed to verify S/MIME signatures; install the openssl package")
    return path


def _epoch(at_time):
    """Seconds since the epoch of ``at_time`` (datetime, naive = UTC, or a number), or now."""
    if at_time is None:
        return int(time.time())
    if isinstance(at_time, datetime.datetime):
        if at_time.tzinfo is None:
            at_time = at_time.replace(tzinfo=datetime.timezone.utc)
        return int(at_time.timestamp())
    if isinstance(at_time, (int, float)) and not isinstance(at_time, bool):
        return int(at_time)
    raise SignatureError("at_time must be a datetime or seconds since the epoch, got %r" % (at_time,))


def _utc(epoch):
    return datetime.datetime.fromtimestamp(epoch, tz=datetime.timezone.utc)


def _validity(cert):
    """(not_before, not_after) as aware UTC datetimes, for old and new cryptography."""
    before = getattr(cert, "not_valid_before_utc", None)
    after = getattr(cert, "not_valid_after_utc", None)
    if before is None:
        before = cert.not_valid_before.replace(tzinfo=datetime.timezone.utc)
        after = cert.not_valid_after.replace(tzinfo=datetime.timezone.utc)
    return before, after


def load_certificate(pem, what):
    """The cryptography certificate of PEM ``pem`` (bytes or str); SignatureError naming ``what`` when it is not one."""
    require_cryptography()
    if isinstance(pem, str):
        pem = pem.encode("ascii", "replace")
    try:
        return x509.load_pem_x509_certificate(pem)
    except (ValueError, TypeError) as exc:
        raise SignatureError("%s: not a PEM certificate: %s" % (what, exc))


def load_private_key(pem, password, what):
    """The cryptography private key of PEM ``pem`` (``password`` for an encrypted one); SignatureError naming ``what``."""
    require_cryptography()
    if isinstance(pem, str):
        pem = pem.encode("ascii", "replace")
    if isinstance(password, str):
        password = password.encode("utf-8")
    try:
        return serialization.load_pem_private_key(pem, password=password)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError("%s: cannot be loaded (wrong passphrase or not a PEM private key): %s" % (what, exc))


def _public_der(public_key):
    return public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def smime_canonical(content):
    """The canonical S/MIME form of ``content``: each line end CRLF.

    This is what a signature covers and what readers give back as the signed payload.  A carriage
    return that does not end a line would be lost or changed by readers, so it is refused.
    """
    if not isinstance(content, bytes):
        raise SignatureError("content to sign must be bytes, got %s" % type(content).__name__)
    if b"\r" in content.replace(b"\r\n", b""):
        raise SignatureError("content to sign has a carriage return that is not part of a CRLF line end; S/MIME readers would change it")
    return content.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def check_signing_certificate(cert_pem, key_pem=None, at_time=None, key_password=None):
    """Reasons why ``cert_pem`` (with ``key_pem``) should not sign image lists; empty when it is fine.

    Checked: the key usage has digitalSignature, the extended key usage (when present) allows
    S/MIME (emailProtection), the certificate is valid at ``at_time`` (default now), the key is a
    supported type and size, and the private key belongs to the certificate.  A certificate or key
    that cannot be parsed at all raises SignatureError.
    """
    require_cryptography()
    cert = load_certificate(cert_pem, "signing certificate")
    reasons = []
    try:
        usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
        if not usage.digital_signature:
            reasons.append("key usage lacks digitalSignature")
    except x509.ExtensionNotFound:
        pass
    try:
        extended = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        if ExtendedKeyUsageOID.EMAIL_PROTECTION not in extended and ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE not in extended:
            reasons.append("extended key usage lacks emailProtection, so S/MIME readers (openssl smime -verify) refuse its signatures")
    except x509.ExtensionNotFound:
        pass
    now = _utc(_epoch(at_time))
    not_before, not_after = _validity(cert)
    if now < not_before:
        reasons.append("not valid before %s" % not_before.strftime("%Y-%m-%dT%H:%M:%SZ"))
    if now > not_after:
        reasons.append("expired on %s" % not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
    public_key = cert.public_key()
    if isinstance(public_key, rsa.RSAPublicKey):
        if public_key.key_size < 2048:
            reasons.append("RSA key of %d bits, fewer than 2048" % public_key.key_size)
    elif not isinstance(public_key, ec.EllipticCurvePublicKey):
        reasons.append("key type %s cannot sign S/MIME here (RSA or EC only)" % type(public_key).__name__)
    if key_pem is not None:
        key = load_private_key(key_pem, key_password, "signing key")
        if _public_der(key.public_key()) != _public_der(public_key):
            reasons.append("the private key does not belong to the certificate")
    return reasons


def sign_detached(content, cert_pem, key_pem, digest="sha256", chain_pems=(), key_password=None, check=True):
    """Sign ``content`` (bytes) as detached S/MIME (``multipart/signed``); return the envelope bytes.

    The signed payload is ``smime_canonical(content)`` (see the module documentation).  ``chain_pems``
    are intermediate CA certificates to include so that readers can build the chain.  With ``check``
    (the default), a certificate that :func:`check_signing_certificate` objects to is refused with
    SignatureError rather than producing lists that every reader rejects.
    """
    require_cryptography()
    if digest not in SIGNING_DIGESTS:
        raise SignatureError("digest %r is not allowed for signing; use one of %s" % (digest, ", ".join(SIGNING_DIGESTS)))
    data = smime_canonical(content)
    cert = load_certificate(cert_pem, "signing certificate")
    key = load_private_key(key_pem, key_password, "signing key")
    chain = [load_certificate(pem, "chain certificate %d" % (index + 1)) for index, pem in enumerate(chain_pems)]
    if check:
        reasons = check_signing_certificate(cert_pem, None, None)
        if _public_der(key.public_key()) != _public_der(cert.public_key()):
            reasons.append("the private key does not belong to the certificate")
        if reasons:
            raise SignatureError("signing certificate %s: %s" % (dn_from_x509_name(cert.subject), "; ".join(reasons)))
    algorithm = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}[digest]()
    builder = pkcs7.PKCS7SignatureBuilder().set_data(data).add_signer(cert, key, algorithm)
    for extra in chain:
        builder = builder.add_certificate(extra)
    try:
        return builder.sign(serialization.Encoding.SMIME, [pkcs7.PKCS7Options.DetachedSignature])
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise SignatureError("signing with %s failed: %s" % (dn_from_x509_name(cert.subject), exc))


class Verdict(object):
    """The judgement of one object, ``source``: ``valid``, and every reason it is not, each reading ``"<what> <source>: <reason>"``.

    A refused object is a result, not an exception; the verdicts of signatures and of image lists build on this.
    """

    what = "image list"

    def __init__(self, source):
        self.source = source
        self.valid = False
        self.reasons = []

    def refuse(self, reason):
        """Add a reason, naming what is refused; returns the verdict."""
        self.reasons.append("%s %s: %s" % (self.what, self.source, reason))
        return self

    def to_dict(self):
        """Plain data for module results: source, valid, reasons."""
        return {"source": self.source, "valid": self.valid, "reasons": list(self.reasons)}


class SignatureVerdict(Verdict):
    """The outcome of :func:`verify_detached`.

    ``valid``: the signature is good, by one signer, chaining to a trust anchor (with CRLs when
    checked), with an accepted digest.  ``content`` is the signed payload, set only when valid.
    ``signer_dn`` / ``issuer_dn`` (one-line display form), ``signer_name`` / ``issuer_name`` (the
    :class:`~dn.DistinguishedName` structures, for every comparison), ``signer_cert_pem``,
    ``chain_pems`` (every certificate embedded in the envelope, PEM; untrusted intermediates only)
    and ``digest`` are filled in whenever they can be read; when ``valid`` is false they describe what
    the envelope claims and are unverified.  ``signer_count`` is the number of signerInfos.
    ``revoked`` is True when the site's CRLs (never the envelope's) revoke the signer certificate or a
    CA certificate of its chain.
    """

    def __init__(self, source, what="image list"):
        super().__init__(source)
        self.what = what
        self.content = None
        self.signer_dn = None
        self.issuer_dn = None
        self.signer_name = None
        self.issuer_name = None
        self.digest = None
        self.signer_count = 0
        self.signer_cert_pem = None
        self.chain_pems = []
        self.revoked = False
        self.revoked_content = None   # with ``revoked``: the content, when the revoked signer's key really signed it

    def to_dict(self):
        """Plain data for module results (without the content)."""
        return dict(super().to_dict(), signer_dn=self.signer_dn, issuer_dn=self.issuer_dn, digest=self.digest,
                    signer_count=self.signer_count, revoked=self.revoked)

    def __repr__(self):
        return "SignatureVerdict(valid=%r, reasons=%r, signer_dn=%r, digest=%r)" % (self.valid, self.reasons, self.signer_dn, self.digest)


def _header_content_type(envelope):
    """The media type of the top-level Content-Type header, '' when absent, None when there are no headers."""
    head = envelope[:MAX_HEADER_BYTES]
    headers = []
    for raw in head.split(b"\n"):
        line = raw[:-1] if raw.endswith(b"\r") else raw
        if not line:
            break
        if line[:1] in (b" ", b"\t"):
            if not headers:
                return None
            headers[-1] += b" " + line.strip()
            continue
        name, sep, _value = line.partition(b":")
        if not sep or not _HEADER_NAME.match(name):
            return None
        headers.append(line)
    else:
        return None
    if not headers:
        return None
    for header in headers:
        name, _sep, value = header.partition(b":")
        if name.strip().lower() == b"content-type":
            return value.split(b";", 1)[0].strip().lower().decode("ascii", "replace")
    return ""


def _openssl_messages(stderr):
    """OpenSSL's error reasons (with their detail), in order, without repeats."""
    messages = []
    for line in stderr.splitlines():
        match = _OPENSSL_ERROR.match(line.strip())
        if match:
            function, reason, data = match.group(1).strip(), match.group(2).strip(), match.group(3).strip()
            text = "%s: %s" % (function, reason) if function else reason
            if data:
                text += ": " + data
        elif line.strip() and "verification failure" not in line.lower() and "verification successful" not in line.lower():
            text = line.strip()
        else:
            continue
        if text not in messages:
            messages.append(text)
    return messages


def _parse_signer_infos(printed):
    """Signer infos from ``openssl cms -cmsout -print``: a list of dicts (digest_oid, digest_name, serial).

    The print-out contains text from the envelope (certificates, attributes) that is not escaped, so a
    crafted envelope could add lines that look like structure.  Added lines can only make markers
    appear more often, so any repeated or out-of-place marker refuses the envelope (ValueError).
    """
    lines = [line.rstrip() for line in printed.split("\n")]
    if len(lines) < 2 or lines[0] != "CMS_ContentInfo:" or not lines[1].startswith("  contentType: ") \
            or not lines[1].endswith("(1.2.840.113549.1.7.2)"):
        raise ValueError("not CMS signed data")
    markers = [index for index, line in enumerate(lines) if line == "    signerInfos:"]
    if len(markers) != 1:
        raise ValueError("ambiguous structure (%d signerInfos sections)" % len(markers))
    signers = []
    index = markers[0] + 1
    while index < len(lines):
        line = lines[index]
        if line.startswith("        version: "):
            signers.append({"digest_oid": None, "digest_name": None, "serial": None})
        elif line == "        digestAlgorithm:":
            if not signers or signers[-1]["digest_oid"] is not None:
                raise ValueError("ambiguous structure (digestAlgorithm outside a signerInfo or repeated)")
            following = lines[index + 1] if index + 1 < len(lines) else ""
            match = re.match(r"^          algorithm: (.+) \(([0-9.]+)\)$", following)
            if not match:
                raise ValueError("signerInfo digestAlgorithm without an algorithm")
            signers[-1]["digest_name"], signers[-1]["digest_oid"] = match.group(1), match.group(2)
        elif line.startswith("          serialNumber: ") and signers and signers[-1]["digest_oid"] is None \
                and signers[-1]["serial"] is None:
            try:
                signers[-1]["serial"] = int(line.split(":", 1)[1].strip(), 0)
            except ValueError:
                signers[-1]["serial"] = None
        index += 1
    if any(signer["digest_oid"] is None for signer in signers):
        raise ValueError("signerInfo without digestAlgorithm")
    return signers


def _pem_certificates(data):
    certs = []
    for block in _PEM_CERT.findall(data or b""):
        try:
            certs.append(x509.load_pem_x509_certificate(block))
        except ValueError:
            continue
    return certs


def certificate_facts(data):
    """For each PEM certificate in ``data`` (bytes): (pem, subject, issuer, sha256 fingerprint).

    Subject and issuer are :class:`~dn.DistinguishedName`; the fingerprint is the lower-case hex
    sha256 of the DER.  Blocks that are not certificates are skipped.
    """
    require_cryptography()
    facts = []
    for cert in _pem_certificates(data):
        try:
            subject, issuer = name_from_x509(cert.subject), name_from_x509(cert.issuer)
        except VmicError:
            continue
        facts.append((cert.public_bytes(serialization.Encoding.PEM), subject, issuer, cert.fingerprint(hashes.SHA256()).hex()))
    return facts


class _OpenSSL(object):
    """Runs openssl in a private directory with a clean environment."""

    def __init__(self, binary, workdir):
        self.binary = binary
        self.workdir = workdir
        # No OPENSSL_CONF, SSL_CERT_FILE or SSL_CERT_DIR from the caller: they could add trust anchors.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C"}

    def path(self, name):
        return os.path.join(self.workdir, name)

    def run(self, args):
        try:
            proc = subprocess.run([self.binary] + list(args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, cwd=self.workdir, env=self.env, timeout=OPENSSL_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            return 124, "", "openssl did not finish within %d s" % OPENSSL_TIMEOUT
        except OSError as exc:
            raise MissingDependencyError("the openssl command %s cannot be run: %s" % (self.binary, exc.strerror or exc))
        return (proc.returncode, proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace"))

    def read(self, name, limit):
        path = self.path(name)
        if not os.path.exists(path):
            return None
        with open(path, "rb") as handle:
            return handle.read(limit + 1)


def _chain_reason(message, signer, attime):
    """An X.509 verification error with a hint, naming the signer certificate when it is known."""
    lowered = message.lower()
    text = message
    for needle, hint in _CHAIN_HINTS:
        if needle in lowered:
            text = "%s (%s)" % (message, hint)
            break
    if signer is None:
        return text
    if "certificate has expired" in lowered or "certificate is not yet valid" in lowered:
        # OpenSSL does not say which certificate of the chain; tell the operator.
        not_before, not_after = _validity(signer)
        now = _utc(int(time.time()) if attime is None else attime)
        if not_before <= now <= not_after:
            text = "%s (a CA certificate of the chain, not the signer's, valid %s to %s)" % (
                message, not_before.strftime("%Y-%m-%dT%H:%M:%SZ"), not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
        else:
            text = "%s (signer certificate valid %s to %s)" % (
                text, not_before.strftime("%Y-%m-%dT%H:%M:%SZ"), not_after.strftime("%Y-%m-%dT%H:%M:%SZ"))
    return "signer %s: %s" % (dn_from_x509_name(signer.subject), text)


def _claimed_signer(certs, serial):
    matches = [cert for cert in certs if serial is not None and cert.serial_number == serial]
    return matches[0] if len(matches) == 1 else None


def verify_detached(envelope, trust, source, at_time=None, allow_legacy_digests=False, max_bytes=MAX_ENVELOPE_BYTES,
                    purpose="smimesign", what="image list"):
    """Verify a detached S/MIME envelope (bytes) against ``trust`` (a truststore.TrustStore).

    ``source`` names the object in reasons, which read ``"<what> <source>: <reason>"``.  ``at_time``
    (datetime or epoch seconds) verifies as of that time instead of now.  ``purpose`` is OpenSSL's
    certificate purpose: ``smimesign`` (the default, what ``openssl smime -verify`` and the HEPiX
    readers check: key usage digitalSignature or nonRepudiation and, when there is an extended key
    usage, emailProtection) or ``any`` (for endorsers whose certificates lack an S/MIME usage).
    SHA-1 and MD5 signatures are refused unless ``allow_legacy_digests``.  Returns a
    :class:`SignatureVerdict`; raises only for operator errors.
    """
    verdict = SignatureVerdict(source, what)
    refuse = verdict.refuse
    prefix = "%s %s: " % (what, source)

    if not isinstance(envelope, bytes):
        raise SignatureError("%sthe envelope must be bytes, got %s" % (prefix, type(envelope).__name__))
    if len(envelope) > max_bytes:
        return refuse("%d bytes, larger than the limit of %d bytes" % (len(envelope), max_bytes))
    if purpose not in PURPOSES:
        raise SignatureError("%spurpose must be one of %s, got %r" % (prefix, ", ".join(PURPOSES), purpose))
    attime = None if at_time is None else _epoch(at_time)
    require_cryptography()
    openssl_bin = find_openssl()

    media_type = _header_content_type(envelope)
    if media_type != "multipart/signed":
        if media_type:
            return refuse("%s: Content-Type is %s, not multipart/signed" % (NOT_SIGNED, media_type))
        return refuse(NOT_SIGNED)

    workdir = tempfile.mkdtemp(prefix="vmic-smime-")
    try:
        openssl = _OpenSSL(openssl_bin, workdir)
        with open(openssl.path("envelope"), "wb") as handle:
            handle.write(envelope)
        _verify_in(openssl, verdict, trust, attime, allow_legacy_digests, max_bytes, purpose)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    verdict.valid = not verdict.reasons
    if not verdict.valid:
        verdict.content = None
    return verdict


def _verify_in(openssl, verdict, trust, attime, allow_legacy_digests, max_bytes, purpose):
    refuse = verdict.refuse
    no_anchors = ["-no-CAfile", "-no-CApath", "-no-CAstore"]
    code, _out, err = openssl.run(["cms", "-cmsout", "-in", "envelope", "-outform", "DER", "-out", "signature.der"])
    if code != 0:
        details = "; ".join(_openssl_messages(err)) or "openssl exit %d" % code
        return refuse("malformed S/MIME envelope: %s" % details)
    code, printed, err = openssl.run(["cms", "-cmsout", "-print", "-noout", "-inform", "DER", "-in", "signature.der"])
    if code != 0:
        return refuse("malformed S/MIME envelope: %s" % ("; ".join(_openssl_messages(err)) or "openssl exit %d" % code))
    try:
        signers = _parse_signer_infos(printed)
    except ValueError as exc:
        return refuse("malformed S/MIME envelope: %s" % exc)
    verdict.signer_count = len(signers)
    if not signers:
        return refuse("no signer (the envelope holds no signerInfo)")
    if len(signers) > 1:
        return refuse("%d signers; exactly one signer is required" % len(signers))
    signer = signers[0]
    verdict.digest = _DIGEST_OIDS.get(signer["digest_oid"], signer["digest_name"])

    try:
        with open(openssl.path("signature.der"), "rb") as handle:
            envelope_certs = pkcs7.load_der_pkcs7_certificates(handle.read())
    except ValueError:
        envelope_certs = []
    verdict.chain_pems = [cert.public_bytes(serialization.Encoding.PEM) for cert in envelope_certs]
    claimed = _claimed_signer(envelope_certs, signer["serial"])
    if claimed is not None:
        _set_signer(verdict, claimed)

    args = ["cms", "-verify", "-in", "envelope", "-out", "content", "-signer", "signer.pem", "-purpose", purpose]
    args.extend(trust.openssl_args(openssl.workdir))
    if attime is not None:
        args.extend(["-attime", str(attime)])
    code, _out, err = openssl.run(args)
    _raise_operator_error(code, err, trust)
    problems = []
    if code == 0:
        certs = _pem_certificates(openssl.read("signer.pem", 1024 * 1024))
        if len(certs) != 1:
            problems.append("openssl reported %d signer certificates; exactly one signer is required" % len(certs))
        else:
            _set_signer(verdict, certs[0])
        content = openssl.read("content", max_bytes)
        if content is None:
            problems.append("openssl wrote no signed content")
        elif len(content) > max_bytes:
            problems.append("signed content larger than the limit of %d bytes" % max_bytes)
        else:
            verdict.content = content
    else:
        problems.extend(_verification_problems(openssl, err, code, claimed, attime, no_anchors))
    if trust.crl_check and verdict.signer_cert_pem is not None:
        site = _site_revocation_problems(openssl, verdict, trust, attime, purpose)
        if code == 0:
            problems.extend(site)
        else:
            # The envelope was refused already; add what the site's CRLs say about revocation, once.
            problems.extend(p for p in site if verdict.revoked and "revoked" in p and p not in problems)
        if verdict.revoked:
            verdict.revoked_content = _intact_content(openssl, max_bytes)
    for problem in problems:
        refuse(problem)

    digest = verdict.digest
    if digest in LEGACY_DIGESTS:
        if not allow_legacy_digests:
            refuse("signed with %s, a legacy digest; allow_legacy_digests permits it" % digest)
    elif digest not in ACCEPTED_DIGESTS:
        refuse("signed with digest %s (%s), which is not accepted" % (digest, signer["digest_oid"]))
    return verdict


_VERIFY_ERROR = re.compile(r"^error ([0-9]+) at ([0-9]+) depth lookup: (.+)$")


def _intact_content(openssl, max_bytes):
    """The signed content when the signature itself is intact (the claimed signer's key signed it), else None.

    Only a revoked signer needs this: revocation withdraws an endorser's images only when the revoked
    certificate really signed a list (listverify decides), never because an envelope names one.
    """
    code, _out, _err = openssl.run(["cms", "-verify", "-noverify", "-in", "envelope", "-out", "content.intact",
                                    "-no-CAfile", "-no-CApath", "-no-CAstore"])
    if code != 0:
        return None
    content = openssl.read("content.intact", max_bytes)
    return content if content is not None and len(content) <= max_bytes else None


def _site_revocation_problems(openssl, verdict, trust, attime, purpose):
    """Judge the signer's chain again with the site's trust anchors and CRLs only (``openssl verify``).

    ``openssl cms -verify`` prefers a time-valid CRL from the envelope's ``crls`` field to the CA
    directory's, so a revoked signer could embed its CA's previous CRL.  Here the envelope gives
    only untrusted intermediates (``-untrusted``), never a CRL or an anchor.  Sets
    ``verdict.revoked`` when the site's CRLs revoke the signer or a CA of its chain.
    """
    with open(openssl.path("site-signer.pem"), "wb") as handle:
        handle.write(verdict.signer_cert_pem)
    args = ["verify", "-purpose", purpose]
    if verdict.chain_pems:
        with open(openssl.path("site-untrusted.pem"), "wb") as handle:
            handle.write(b"".join(verdict.chain_pems))
        args.extend(["-untrusted", "site-untrusted.pem"])
    args.extend(trust.openssl_verify_args(openssl.workdir))
    if attime is not None:
        args.extend(["-attime", str(attime)])
    code, _out, err = openssl.run(args + ["site-signer.pem"])
    if code == 0:
        return []
    if code == 1:
        raise SignatureError("openssl verify refused its arguments (exit 1): %s" % "; ".join(_openssl_messages(err)))
    signer = "signer %s" % verdict.signer_dn
    problems, subject = [], None
    for line in err.splitlines():
        match = _VERIFY_ERROR.match(line.strip())
        if not match:
            if line.strip() and not line.startswith("error "):
                subject = line.strip()
            continue
        depth, message = int(match.group(2)), match.group(3).strip()
        if message.lower() == "certificate revoked":
            verdict.revoked = True
            if depth == 0:
                problem = "%s: certificate revoked (judged by the site's CRLs only)" % signer
            else:
                problem = "%s: the CA certificate %s of its chain is revoked (judged by the site's CRLs only)" % (signer, subject)
        else:
            problem = "%s: %s (judged by the site's trust anchors and CRLs only)" % (signer, _chain_reason(message, None, attime))
        if problem not in problems:
            problems.append(problem)
    return problems or ["%s: the site's trust anchors and CRLs refuse the chain: %s" % (signer, "; ".join(_openssl_messages(err)) or code)]


def _set_signer(verdict, cert):
    verdict.signer_dn = dn_from_x509_name(cert.subject)
    verdict.issuer_dn = dn_from_x509_name(cert.issuer)
    try:
        verdict.signer_name = name_from_x509(cert.subject)
        verdict.issuer_name = name_from_x509(cert.issuer)
    except VmicError:
        verdict.signer_name = verdict.issuer_name = None
    verdict.signer_cert_pem = cert.public_bytes(serialization.Encoding.PEM)


def _raise_operator_error(code, err, trust):
    """Errors of the command line or of the trust anchors are the operator's, not the list's."""
    if "Error loading file" in err or "Not a directory" in err or "Error loading directory" in err:
        raise TrustError("%s: openssl cannot load the trust anchors: %s" % (trust.describe(), "; ".join(_openssl_messages(err))))
    if code == 1:
        raise SignatureError("openssl cms -verify refused its arguments (exit 1): %s" % "; ".join(_openssl_messages(err)))


def _verification_problems(openssl, err, code, signer, attime, no_anchors):
    """Reasons for a failed ``openssl cms -verify``: chain problems and, separately, the signature itself."""
    messages = _openssl_messages(err)
    chain = [m.split("Verify error:", 1)[1].strip() for m in messages if "Verify error:" in m]
    problems = []
    if chain:
        problems.extend(_chain_reason(message, signer, attime) for message in chain)
        # OpenSSL checks the chain before the signature: check the signature alone as well, so that a
        # tampered list from an untrusted signer is reported as both.
        code2, _out, err2 = openssl.run(["cms", "-verify", "-noverify", "-in", "envelope", "-out", "content.unverified"] + no_anchors)
        if code2 != 0:
            problems.extend(_signature_problems(_openssl_messages(err2), code2))
    else:
        problems.extend(_signature_problems(messages, code))
    return problems


def _signature_problems(messages, code):
    lowered = " ".join(messages).lower()
    if "cms_signerinfo_verify_content" in lowered or "content verify error" in lowered or "digest failure" in lowered:
        return ["signature does not match the content (digest failure)"]
    if "signature failure" in lowered or "verification failure" in lowered or "signerinfo verify error" in lowered:
        return ["the signature value is invalid (signature failure)"]
    return ["verification failed: %s" % ("; ".join(messages) or "openssl exit %d" % code)]


def _pinned_anchor(endorser, trust):
    """(the anchor certificate the endorser is pinned to, None) or (None, the reason there is none)."""
    who = "endorser %s" % endorser.name
    if endorser.ca_fingerprint:
        pinned = trust.anchor_with_fingerprint(endorser.ca_fingerprint)
        if pinned is None:
            return None, "%s: its pinned CA certificate (sha256 %s) is not a trust anchor of %s" % (who, endorser.ca_fingerprint, trust.describe())
        if pinned.name != endorser.ca_name:
            return None, "%s: its pinned CA certificate %s is not its CA %s" % (who, pinned.describe(), endorser.ca)
        return pinned, None
    anchors = trust.anchors_named(endorser.ca_name)
    if not anchors:
        return None, ("%s: no trust anchor of %s is its CA %s (install that CA certificate, or pin one with ca_fingerprint)"
                      % (who, trust.describe(), endorser.ca))
    if len(anchors) > 1:
        return None, ("%s: %d trust anchors have the subject of its CA %s (%s); set ca_fingerprint to the one that issues it"
                      % (who, len(anchors), endorser.ca, ", ".join(a.describe() for a in anchors)))
    return anchors[0], None


def verify_endorser_binding(signature, endorser, trust):
    """Reasons why the signer of ``signature`` (a SignatureVerdict) is not bound to ``endorser``; empty when it is.

    ``endorser`` (a truststore.Endorser) is pinned to one CA certificate: the trust anchor with its
    ``ca_fingerprint``, or else the only anchor of ``trust`` whose subject is its ``ca`` (none, or
    several, is a refusal: fail closed).  The signer certificate must be issued by that certificate:
    ``openssl verify -partial_chain`` with the pinned certificate as the only anchor checks the
    signature of the link, so a look-alike CA (a sub-CA given the victim CA's name by another trusted
    CA) is refused whatever its names.  Then the IGTF namespace policy of the CA directory
    (``<hash>.namespaces``, else ``<hash>.signing_policy``, see truststore.CAPolicy) must permit the
    signer's subject for the pinned CA, and the pinned CA's subject for its own issuer.  Each reason
    names the endorser and the CA.  Validity in time and revocation are :func:`verify_detached`'s.
    """
    who = "endorser %s" % endorser.name
    if signature is None or signature.signer_cert_pem is None:
        return ["%s: the signer certificate is unknown, so its binding to the CA %s cannot be checked" % (who, endorser.ca)]
    facts = certificate_facts(signature.signer_cert_pem)
    if len(facts) != 1:
        return ["%s: the signer certificate cannot be read, so its binding to the CA %s cannot be checked" % (who, endorser.ca)]
    _pem, subject, issuer, _fingerprint = facts[0]
    if subject != endorser.dn_name or issuer != endorser.ca_name:
        return ["%s: the signer %s (issuer %s) is not the endorser's certificate %s from the CA %s"
                % (who, subject, issuer, endorser.dn, endorser.ca)]
    try:
        pinned, reason = _pinned_anchor(endorser, trust)
    except VmicError as exc:
        return ["%s: its CA %s cannot be looked up: %s" % (who, endorser.ca, exc)]
    if pinned is None:
        return [reason]
    reasons = _issued_by(signature.signer_cert_pem, pinned, who)
    if reasons:
        return reasons
    try:
        reasons.extend(_policy_reasons(trust, subject, pinned, who))
    except VmicError as exc:
        reasons.append("%s: the namespace policy of the CA %s cannot be checked: %s" % (who, endorser.ca, exc))
    return reasons


def _issued_by(signer_pem, pinned, who):
    """[] when the signer certificate's signature verifies with the pinned CA certificate's key, else the reason."""
    openssl_bin = find_openssl()
    workdir = tempfile.mkdtemp(prefix="vmic-binding-")
    try:
        openssl = _OpenSSL(openssl_bin, workdir)
        for name, pem in (("signer.pem", signer_pem), ("pinned.pem", pinned.pem)):
            with open(openssl.path(name), "wb") as handle:
                handle.write(pem)
        # -no_check_time: validity in time is judged by verify_detached; only the link by key matters here.
        code, _out, err = openssl.run(["verify", "-partial_chain", "-no-CApath", "-no-CAstore", "-CAfile", "pinned.pem",
                                       "-no_check_time", "signer.pem"])
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    if code == 0:
        return []
    if code == 1:
        raise SignatureError("openssl verify refused its arguments (exit 1): %s" % "; ".join(_openssl_messages(err)))
    errors = [match.group(3).strip() for match in (_VERIFY_ERROR.match(line.strip()) for line in err.splitlines()) if match]
    return ["%s: the signer certificate is not issued by its pinned CA certificate %s (%s)"
            % (who, pinned.describe(), "; ".join(errors) or "openssl verify exit %d" % code)]


def _policy_reasons(trust, subject, pinned, who):
    """IGTF namespace policy: the pinned CA may sign the signer's subject, and its issuer may sign the pinned CA."""
    reasons = []
    checks = [(subject, pinned.name, [pinned.hash] if pinned.hash else [])]
    if pinned.issuer_name != pinned.name:
        parents = trust.anchors_named(pinned.issuer_name)
        checks.append((pinned.name, pinned.issuer_name, sorted(set(parent.hash for parent in parents if parent.hash))))
    for checked, issuer, hashes_of_issuer in checks:
        for issuer_hash in hashes_of_issuer:
            policy = trust.ca_policy(issuer_hash)
            refusal = policy.refusal(checked, issuer) if policy is not None else None
            if refusal:
                reasons.append("%s: %s" % (who, refusal))
    return reasons
