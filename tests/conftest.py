"""Make the collection importable as ``ansible_collections.vmic.fleet`` for pytest (testfleet/collection.py)."""

import os
import sys

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if TESTS_DIR not in sys.path:
    sys.path.insert(0, TESTS_DIR)

from testfleet.collection import ensure_collection_path  # noqa: E402  pylint: disable=wrong-import-position

ensure_collection_path()
