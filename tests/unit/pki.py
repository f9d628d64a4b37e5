# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A test PKI made with ``cryptography``: CAs, endorser certificates good and bad, CRLs, and trust
anchors in IGTF layout (``<hash>.0`` / ``<hash>.r0``) and as a bundle file.

    pki = TestPKI(directory)
    pki.good.cert_pem, pki.good.key_pem, pki.good.dn, pki.good.issuer_dn, pki.good.cert_path
    pki.ca_path, pki.ca_file, pki.crl_file
    pki.endorser("carol", issuer="intermediate")   # more good endorsers on demand

Trusted CAs (in ``ca_path`` / ``ca_file``, each with a CRL): ``root``, ``intermediate`` (issued by
root) and ``other_ca`` (an independent root).  ``rogue_ca`` is a CA that is not a trust anchor.
Prepared identities:

    good               issued by root, digitalSignature + emailProtection
    via_intermediate   issued by the intermediate CA (chain_pems / chain_path hold the intermediate)
    other              issued by other_ca
    rsa                RSA 2048, issued by root
    expired            valid until 2 days ago
    not_yet_valid      valid from 2 days from now
    revoked            listed in root's CRL
    no_digital_signature  key usage keyEncipherment only
    server_only        extended key usage serverAuth only (no emailProtection)
    self_signed        a self-signed end-entity certificate
    rogue              issued by rogue_ca (untrusted)

CRLs are valid from 60 days ago to 60 days from now, so verification ``at_time`` within that
window works with CRL checks on.  All keys are EC P-256 (fast) except ``rsa``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import subprocess

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)


def _name(*common_names):
    attributes = [
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"),
        x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "vmic-test"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VMIC Test"),
    ]
    attributes.extend(x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in common_names)
    return x509.Name(attributes)


def _one_line(name):
    # Kept independent of plugins/module_utils/dn.py so that tests cross-check it.
    short = {NameOID.DOMAIN_COMPONENT: "DC", NameOID.ORGANIZATION_NAME: "O", NameOID.COMMON_NAME: "CN",
             NameOID.COUNTRY_NAME: "C", NameOID.ORGANIZATIONAL_UNIT_NAME: "OU", NameOID.USER_ID: "UID"}
    return "".join("/%s=%s" % (short[attribute.oid], attribute.value) for attribute in name)


def _new_key(key_type):
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return ec.generate_private_key(ec.SECP256R1())


def _pem_key(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def openssl_hash(path, kind="x509"):
    """OpenSSL's subject hash of a certificate (or issuer hash of a CRL, ``kind='crl'``)."""
    option = "-subject_hash" if kind == "x509" else "-hash"
    result = subprocess.run(["openssl", kind, option, "-noout", "-in", path], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, check=True)
    return result.stdout.decode("ascii").strip()


def _libcrypto():
    """OpenSSL's libcrypto (the one the openssl command uses), for what the command line cannot do."""
    path = ctypes.util.find_library("crypto")
    if path is None:
        raise RuntimeError("libcrypto not found")
    lib = ctypes.CDLL(path)
    lib.BIO_new_mem_buf.restype = ctypes.c_void_p
    lib.BIO_new_mem_buf.argtypes = [ctypes.c_char_p, ctypes.c_int]
    lib.BIO_s_mem.restype = ctypes.c_void_p
    lib.BIO_new.restype = ctypes.c_void_p
    lib.BIO_new.argtypes = [ctypes.c_void_p]
    lib.BIO_ctrl.restype = ctypes.c_long
    lib.BIO_ctrl.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_long, ctypes.c_void_p]
    lib.BIO_free.argtypes = [ctypes.c_void_p]
    lib.d2i_CMS_bio.restype = ctypes.c_void_p
    lib.d2i_CMS_bio.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.i2d_CMS_bio.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.PEM_read_bio_X509_CRL.restype = ctypes.c_void_p
    lib.PEM_read_bio_X509_CRL.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    lib.CMS_add1_crl.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    lib.X509_CRL_free.argtypes = [ctypes.c_void_p]
    lib.CMS_ContentInfo_free.argtypes = [ctypes.c_void_p]
    return lib


def embed_crls(cms_der, crl_pems):
    """``cms_der`` (a CMS SignedData) with ``crl_pems`` added to its ``crls`` field, by OpenSSL's CMS_add1_crl.

    The ``crls`` field is not covered by the signature, so anyone holding a signed list can do this.
    """
    lib = _libcrypto()
    bio = lib.BIO_new_mem_buf(cms_der, len(cms_der))
    cms = lib.d2i_CMS_bio(bio, None)
    lib.BIO_free(bio)
    if not cms:
        raise ValueError("not a CMS structure")
    try:
        for pem in crl_pems:
            bio = lib.BIO_new_mem_buf(pem, len(pem))
            crl = lib.PEM_read_bio_X509_CRL(bio, None, None, None)
            lib.BIO_free(bio)
            if not crl or lib.CMS_add1_crl(cms, crl) != 1:
                raise ValueError("CMS_add1_crl failed")
            lib.X509_CRL_free(crl)
        out = lib.BIO_new(lib.BIO_s_mem())
        if lib.i2d_CMS_bio(out, cms) != 1:
            raise ValueError("i2d_CMS_bio failed")
        pointer = ctypes.c_char_p()
        length = lib.BIO_ctrl(out, 3, 0, ctypes.byref(pointer))  # BIO_get_mem_data
        data = ctypes.string_at(pointer, length)
        lib.BIO_free(out)
        return data
    finally:
        lib.CMS_ContentInfo_free(cms)


class Identity(object):
    """A certificate with its key and where they are written."""

    def __init__(self, name, cert, key, directory, chain=()):
        self.name = name
        self.cert = cert
        self.key = key
        self.cert_pem = cert.public_bytes(serialization.Encoding.PEM)
        self.key_pem = _pem_key(key)
        self.dn = _one_line(cert.subject)
        self.issuer_dn = _one_line(cert.issuer)
        self.chain = tuple(chain)
        self.chain_pems = tuple(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)
        self.cert_path = os.path.join(directory, "%s.crt" % name)
        self.key_path = os.path.join(directory, "%s.key" % name)
        self.chain_path = os.path.join(directory, "%s.chain.pem" % name) if self.chain else None
        with open(self.cert_path, "wb") as handle:
            handle.write(self.cert_pem)
        with open(self.key_path, "wb") as handle:
            handle.write(self.key_pem)
        os.chmod(self.key_path, 0o600)
        if self.chain_path:
            with open(self.chain_path, "wb") as handle:
                handle.write(b"".join(self.chain_pems))

    def __repr__(self):
        return "Identity(%s, %s)" % (self.name, self.dn)


class CA(Identity):
    """A CA identity with its CRL."""

    def __init__(self, name, cert, key, directory, chain=()):
        super(CA, self).__init__(name, cert, key, directory, chain)
        self.revoked = []
        self.crl = None
        self.crl_pem = None
        self.crl_path = os.path.join(directory, "%s.crl.pem" % name)
        self.hash = openssl_hash(self.cert_path)


class TestPKI(object):
    """See the module documentation."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory):
        self.directory = str(directory)
        os.makedirs(self.directory, exist_ok=True)
        self.now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
        self._serial = 1000
        self._endorsers = {}
        self.root = self._ca("root", ("VMIC Test Root CA",))
        self.intermediate = self._ca("intermediate", ("VMIC Test Intermediate CA",), issuer=self.root)
        self.other_ca = self._ca("other_ca", ("VMIC Other Root CA",))
        self.rogue_ca = self._ca("rogue_ca", ("VMIC Rogue CA",))
        self.cas = {"root": self.root, "intermediate": self.intermediate, "other": self.other_ca, "rogue": self.rogue_ca}

        self.good = self.endorser("good")
        self.via_intermediate = self.endorser("via_intermediate", issuer="intermediate")
        self.other = self.endorser("other", issuer="other")
        self.rsa = self.endorser("rsa", key_type="rsa")
        self.expired = self._leaf("expired", self.root, not_before=self.now - 60 * DAY, not_after=self.now - 2 * DAY)
        self.not_yet_valid = self._leaf("not_yet_valid", self.root, not_before=self.now + 2 * DAY, not_after=self.now + 365 * DAY)
        self.revoked = self._leaf("revoked", self.root)
        self.root.revoked.append(self.revoked.cert.serial_number)
        self.no_digital_signature = self._leaf("no_digital_signature", self.root, digital_signature=False)
        self.server_only = self._leaf("server_only", self.root, eku=(ExtendedKeyUsageOID.SERVER_AUTH,))
        self.self_signed = self._self_signed("self_signed")
        self.rogue = self.endorser("rogue", issuer="rogue")

        for ca in self.cas.values():
            self._write_crl(ca)
        self.trusted = (self.root, self.intermediate, self.other_ca)
        self.ca_path = self.write_ca_dir(os.path.join(self.directory, "certificates"))
        self.ca_file = self.write_ca_file(os.path.join(self.directory, "ca-bundle.pem"))
        self.crl_file = os.path.join(self.directory, "crls.pem")
        with open(self.crl_file, "wb") as handle:
            handle.write(b"".join(ca.crl_pem for ca in self.trusted))

    # -- building blocks -------------------------------------------------------------------------

    def _next_serial(self):
        self._serial += 1
        return self._serial

    def _ca(self, name, cns, issuer=None):
        key = _new_key("ec")
        subject = _name(*cns)
        builder = (x509.CertificateBuilder()
                   .subject_name(subject)
                   .issuer_name(issuer.cert.subject if issuer else subject)
                   .public_key(key.public_key())
                   .serial_number(self._next_serial())
                   .not_valid_before(self.now - 365 * DAY)
                   .not_valid_after(self.now + 3650 * DAY)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False))
        signer_key = issuer.key if issuer else key
        builder = builder.add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(signer_key.public_key()), critical=False)
        cert = builder.sign(signer_key, hashes.SHA256())
        return CA(name, cert, key, self.directory, chain=(issuer.cert,) if issuer and issuer.cert.issuer != issuer.cert.subject else ())

    def _leaf(self, name, ca, key_type="ec", not_before=None, not_after=None, digital_signature=True,
              eku=(ExtendedKeyUsageOID.EMAIL_PROTECTION, ExtendedKeyUsageOID.CLIENT_AUTH), subject=None):
        key = _new_key(key_type)
        builder = (x509.CertificateBuilder()
                   .subject_name(subject if subject is not None else _name("Endorser " + name))
                   .issuer_name(ca.cert.subject)
                   .public_key(key.public_key())
                   .serial_number(self._next_serial())
                   .not_valid_before(not_before or self.now - 30 * DAY)
                   .not_valid_after(not_after or self.now + 365 * DAY)
                   .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=digital_signature, content_commitment=False,
                                                key_encipherment=not digital_signature, data_encipherment=False, key_agreement=False,
                                                key_cert_sign=False, crl_sign=False, encipher_only=False, decipher_only=False),
                                  critical=True)
                   .add_extension(x509.ExtendedKeyUsage(list(eku)), critical=False)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
        cert = builder.sign(ca.key, hashes.SHA256())
        chain = (ca.cert,) if ca.cert.issuer != ca.cert.subject else ()
        return Identity(name, cert, key, self.directory, chain=chain)

    def _self_signed(self, name):
        key = _new_key("ec")
        subject = _name("Endorser " + name)
        cert = (x509.CertificateBuilder()
                .subject_name(subject).issuer_name(subject).public_key(key.public_key())
                .serial_number(self._next_serial())
                .not_valid_before(self.now - 30 * DAY).not_valid_after(self.now + 365 * DAY)
                .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                             data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
                                             encipher_only=False, decipher_only=False), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                .sign(key, hashes.SHA256()))
        return Identity(name, cert, key, self.directory)

    def _write_crl(self, ca):
        ca.crl = self._sign_crl(ca, ca.revoked, 1, self.now - 60 * DAY, self.now + 60 * DAY)
        ca.crl_pem = ca.crl.public_bytes(serialization.Encoding.PEM)
        with open(ca.crl_path, "wb") as handle:
            handle.write(ca.crl_pem)

    def _sign_crl(self, ca, revoked, number, last_update, next_update):
        builder = (x509.CertificateRevocationListBuilder()
                   .issuer_name(ca.cert.subject)
                   .last_update(last_update)
                   .next_update(next_update)
                   .add_extension(x509.CRLNumber(number), critical=False)
                   .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False))
        for serial in revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(self.now - 5 * DAY).build())
        return builder.sign(ca.key, hashes.SHA256())

    def crl_pem(self, ca, revoked=(), number=2, last_update_days=-1, next_update_days=60):
        """A PEM CRL of the CA object ``ca`` revoking the ``revoked`` identities, valid from/to the given days from now.

        The CA's own CRL (``ca.crl_pem``, number 1, in the trust anchors) is left as it is.
        """
        serials = [identity.cert.serial_number for identity in revoked]
        crl = self._sign_crl(ca, serials, number, self.at(last_update_days), self.at(next_update_days))
        return crl.public_bytes(serialization.Encoding.PEM)

    # -- public API ------------------------------------------------------------------------------

    def endorser(self, name, issuer="root", key_type="ec"):
        """A good endorser certificate called ``name`` from CA ``issuer`` (root, intermediate, other, rogue)."""
        key = (name, issuer, key_type)
        if key not in self._endorsers:
            self._endorsers[key] = self._leaf(name, self.cas[issuer], key_type=key_type)
        return self._endorsers[key]

    def make_ca(self, name, common_name, issuer=None):
        """Another CA called ``name`` with the subject of the test CAs and CN ``common_name``, with its CRL.

        Issued by the CA object ``issuer`` (self-signed when None); not a trust anchor unless written
        into a CA directory or bundle.
        """
        ca = self._ca(name, (common_name,), issuer=issuer)
        self._write_crl(ca)
        return ca

    def leaf_with_subject(self, name, subject, ca):
        """A good endorser certificate called ``name`` with the ``x509.Name`` ``subject``, issued by the CA object ``ca``."""
        return self._leaf(name, ca, subject=subject)

    def write_ca_dir(self, path, cas=None, crls_of=None):
        """Write an IGTF-layout CA directory: ``<hash>.0`` per CA, ``<hash>.r0`` per CRL.

        ``cas`` defaults to the trusted CAs; ``crls_of`` (default: the same CAs) chooses whose CRLs go in.
        """
        cas = self.trusted if cas is None else tuple(cas)
        crls_of = cas if crls_of is None else tuple(crls_of)
        os.makedirs(path, exist_ok=True)
        # CAs with the same subject share a hash: <hash>.0, <hash>.1, ... as openssl rehash names them.
        cert_index, crl_index = {}, {}
        for ca in cas:
            index = cert_index[ca.hash] = cert_index.get(ca.hash, -1) + 1
            with open(os.path.join(path, "%s.%d" % (ca.hash, index)), "wb") as handle:
                handle.write(ca.cert_pem)
            with open(os.path.join(path, "%s.pem" % ca.name), "wb") as handle:
                handle.write(ca.cert_pem)
        for ca in crls_of:
            index = crl_index[ca.hash] = crl_index.get(ca.hash, -1) + 1
            with open(os.path.join(path, "%s.r%d" % (ca.hash, index)), "wb") as handle:
                handle.write(ca.crl_pem)
        return path

    def write_ca_file(self, path, cas=None, crls_of=()):
        """Write a PEM bundle of CA certificates (default: the trusted CAs), plus the CRLs of ``crls_of``."""
        cas = self.trusted if cas is None else tuple(cas)
        with open(path, "wb") as handle:
            handle.write(b"".join(ca.cert_pem for ca in cas))
            handle.write(b"".join(ca.crl_pem for ca in crls_of))
        return path

    def at(self, days):
        """A datetime ``days`` from the PKI's creation time (negative: in the past)."""
        return self.now + days * DAY
