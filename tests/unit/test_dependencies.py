"""One gate per library: without cryptography the collection still loads, and a module says what to install."""

import os
import subprocess
import sys
import types

from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import library_version
from module_run import COLLECTIONS, run_module

# A package named cryptography that cannot be imported, found before the real one: a host without the library.
BROKEN = "raise ImportError('No module named cryptography (test: not installed)')\n"


def without_cryptography(tmp_path):
    """A PYTHONPATH entry that hides the cryptography library."""
    package = tmp_path / "hide" / "cryptography"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(BROKEN)
    return str(tmp_path / "hide")


def test_gate_reports_missing_cryptography_by_name(tmp_path):
    script = ("from ansible_collections.vmic.fleet.plugins.module_utils import smime, truststore, publish\n"
              "from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError\n"
              "try:\n    smime.sign_detached(b'x', b'', b'')\n"
              "except MissingDependencyError as exc:\n    print(exc)\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([without_cryptography(tmp_path), COLLECTIONS]))
    proc = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=True)
    assert proc.stdout.decode().strip() == ("the Python library cryptography >= 3.2 is needed for certificates, keys and S/MIME signatures: "
                                            "it cannot be imported; install it (Debian: python3-cryptography; PyPI: cryptography)")


def test_module_without_cryptography_fails_with_missing_required_lib(pki, tmp_path):
    hide = without_cryptography(tmp_path)
    catalogue = {"list": {"dc:identifier": "9a8b7c6d-5e4f-4a3b-8c2d-1e0f9a8b7c6d", "dc:title": "T", "hv:uri": "https://repo.test/p.list"},
                 "images": [{"dc:identifier": "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9", "dc:title": "Disk", "hv:version": "1",
                             "hv:uri": "https://repo.test/disk.img", "sl:checksum:sha512": "0" * 128, "hv:size": 1}]}
    args = {"catalogue_data": catalogue, "dest": str(tmp_path / "p.list"), "cert": pki.good.cert_path, "key": pki.good.key_path}
    result = run_module("imagelist_sign", args, tmp_path, pythonpath=[hide])
    assert result["failed"] and result["msg"].startswith("Failed to import the required Python library (cryptography >= 3.2) on ")
    assert "This is required for certificates, keys and S/MIME signatures." in result["msg"]
    assert result["msg"].endswith("(Debian: python3-cryptography; PyPI: cryptography)")


def test_library_version_read_from_the_module():
    assert library_version(types.SimpleNamespace(__version__="38.0.4")) == (38, 0)
    assert library_version(types.SimpleNamespace(version="2.0.8.0")) == (2, 0)
    assert library_version(types.SimpleNamespace()) is None
