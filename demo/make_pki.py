"""The demo's PKI, made with the cryptography library.

    python demo/make_pki.py OUT_DIR

Writes (idempotent: an existing, complete PKI is kept):
  OUT_DIR/ca/              trust anchors in IGTF layout: <hash>.0 (certificate), <hash>.r0 (CRL)
  OUT_DIR/ca.pem           the demo CA certificate (also the site's TLS CA); OUT_DIR/ca.crl.pem its CRL
  OUT_DIR/endorsers/<name>.{crt,key}   two endorsers: "cern-demo" and "desy-demo"
  OUT_DIR/tls/repo.{crt,key}           the repository's HTTPS certificate (DNS name "repo")
  OUT_DIR/pki.json         DNs and paths, for the inventory
"""

import datetime
import json
import os
import subprocess
import sys

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAY = datetime.timedelta(days=1)
ENDORSERS = ("cern-demo", "desy-demo")


def name(*cns):
    attrs = [x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org"), x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "vmic-demo"),
             x509.NameAttribute(NameOID.ORGANIZATION_NAME, "VMIC Demo")]
    return x509.Name(attrs + [x509.NameAttribute(NameOID.COMMON_NAME, cn) for cn in cns])


def one_line(subject):
    short = {NameOID.DOMAIN_COMPONENT: "DC", NameOID.ORGANIZATION_NAME: "O", NameOID.COMMON_NAME: "CN"}
    return "".join("/%s=%s" % (short[a.oid], a.value) for a in subject)


def write(path, data, mode=0o644):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)


def key_pem(key):
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def usage(signature, cert_sign=False, encipher=False):
    return x509.KeyUsage(digital_signature=signature, content_commitment=False, key_encipherment=encipher, data_encipherment=False,
                         key_agreement=False, key_cert_sign=cert_sign, crl_sign=cert_sign, encipher_only=False, decipher_only=False)


def main(out):
    marker = os.path.join(out, "pki.json")
    if os.path.exists(marker):
        print("demo PKI: kept %s" % out)
        return
    now = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = name("VMIC Demo CA")
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 3650 * DAY)
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(usage(False, cert_sign=True), critical=True)
          .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
          .sign(ca_key, hashes.SHA256()))
    ca_pem = ca.public_bytes(serialization.Encoding.PEM)
    write(os.path.join(out, "ca.pem"), ca_pem)
    write(os.path.join(out, "ca.key"), key_pem(ca_key), 0o600)
    crl = (x509.CertificateRevocationListBuilder().issuer_name(ca_name).last_update(now - DAY).next_update(now + 365 * DAY)
           .add_extension(x509.CRLNumber(1), critical=False).sign(ca_key, hashes.SHA256()))
    subject_hash = subprocess.run(["openssl", "x509", "-subject_hash", "-noout", "-in", os.path.join(out, "ca.pem")],
                                  check=True, stdout=subprocess.PIPE).stdout.decode().strip()
    write(os.path.join(out, "ca", "%s.0" % subject_hash), ca_pem)
    write(os.path.join(out, "ca", "%s.r0" % subject_hash), crl.public_bytes(serialization.Encoding.PEM))
    write(os.path.join(out, "ca.crl.pem"), crl.public_bytes(serialization.Encoding.PEM))

    info = {"ca_dn": one_line(ca_name), "ca_dir": os.path.join(out, "ca"), "ca_file": os.path.join(out, "ca.pem"), "endorsers": {}}
    for endorser in ENDORSERS:
        key = ec.generate_private_key(ec.SECP256R1())
        subject = name("Endorser " + endorser)
        cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - DAY).not_valid_after(now + 730 * DAY)
                .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
                .add_extension(usage(True), critical=True)
                .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), critical=False)
                .sign(ca_key, hashes.SHA256()))
        cert_path = os.path.join(out, "endorsers", endorser + ".crt")
        key_path = os.path.join(out, "endorsers", endorser + ".key")
        write(cert_path, cert.public_bytes(serialization.Encoding.PEM))
        write(key_path, key_pem(key), 0o600)
        info["endorsers"][endorser] = {"dn": one_line(subject), "ca": one_line(ca_name), "cert": cert_path, "key": key_path}

    key = ec.generate_private_key(ec.SECP256R1())
    tls = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "repo")])).issuer_name(ca_name)
           .public_key(key.public_key()).serial_number(x509.random_serial_number())
           .not_valid_before(now - DAY).not_valid_after(now + 730 * DAY)
           .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
           .add_extension(usage(True, encipher=True), critical=True)
           .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
           .add_extension(x509.SubjectAlternativeName([x509.DNSName("repo")]), critical=False)
           .sign(ca_key, hashes.SHA256()))
    info["tls_cert"] = os.path.join(out, "tls", "repo.crt")
    info["tls_key"] = os.path.join(out, "tls", "repo.key")
    write(info["tls_cert"], tls.public_bytes(serialization.Encoding.PEM))
    write(info["tls_key"], key_pem(key), 0o600)
    write(marker, json.dumps(info, indent=2, sort_keys=True).encode())
    print("demo PKI: made %s (CA %s, endorsers %s)" % (out, info["ca_dn"], ", ".join(ENDORSERS)))


if __name__ == "__main__":
    main(os.path.abspath(sys.argv[1]))
