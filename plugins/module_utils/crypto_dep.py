# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that imports the ``cryptography`` library (certificates, keys, S/MIME signing).

Other files import the names they need from here, never from ``cryptography``. The import may fail
(a host without the library): the names are then None, the modules still load, and code that uses
them calls :func:`require_cryptography` first, which raises MissingLibraryError naming what to install.
"""

from __future__ import annotations

import traceback

from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import MissingLibraryError, library_version

# PKCS7SignatureBuilder with Encoding.SMIME (S/MIME signing) came in 3.2; Debian 12 has 38.
MIN_VERSION = (3, 2)
LIBRARY = "cryptography >= 3.2"
REASON = "for certificates, keys and S/MIME signatures"
INSTALL_HINT = "Debian: python3-cryptography; PyPI: cryptography"

try:
    import cryptography
    from cryptography import x509
    from cryptography.exceptions import UnsupportedAlgorithm
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec, rsa
    from cryptography.hazmat.primitives.serialization import pkcs7
    from cryptography.x509.oid import ExtendedKeyUsageOID
except ImportError:  # pragma: no cover - depends on the host
    IMPORT_ERROR = traceback.format_exc()
    cryptography = x509 = UnsupportedAlgorithm = hashes = serialization = ec = rsa = pkcs7 = ExtendedKeyUsageOID = None
else:
    IMPORT_ERROR = None

__all__ = ["ExtendedKeyUsageOID", "UnsupportedAlgorithm", "ec", "hashes", "pkcs7", "require_cryptography", "rsa", "serialization", "x509"]


def require_cryptography():
    """Raise MissingLibraryError unless cryptography >= MIN_VERSION is imported."""
    if cryptography is None:
        raise MissingLibraryError(LIBRARY, REASON, INSTALL_HINT, "it cannot be imported", IMPORT_ERROR)
    version = library_version(cryptography)
    if version is None or version < MIN_VERSION:
        raise MissingLibraryError(LIBRARY, REASON, INSTALL_HINT, "version %s is too old" % getattr(cryptography, "__version__", "unknown"))
