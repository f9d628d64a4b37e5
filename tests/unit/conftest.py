"""Shared fixtures for unit tests: the test PKI (see pki.py), made once per session."""

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from pki import TestPKI  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def pki(tmp_path_factory):
    """A TestPKI: CAs, good and bad endorser certificates, CRLs, a CA directory and a CA bundle."""
    return TestPKI(tmp_path_factory.mktemp("pki"))
