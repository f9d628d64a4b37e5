"""The working tree as the collection ``vmic.fleet`` for Python: one place for tests, the harness and bench.

The repository root is the collection root; a symlink ``.tmp/collections/ansible_collections/vmic/fleet``
gives it the import path Ansible uses, so module_utils import each other exactly as they do on a host.
"""

import os
import sys

TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REPO_ROOT = os.path.dirname(TESTS_DIR)
COLLECTIONS = os.path.join(REPO_ROOT, ".tmp", "collections")


def ensure_collection_path():
    """Create the symlink (if missing) and put ``.tmp/collections`` on sys.path; returns that directory."""
    link = os.path.join(COLLECTIONS, "ansible_collections", "vmic", "fleet")
    if not os.path.exists(link):
        os.makedirs(os.path.dirname(link), exist_ok=True)
        try:
            os.symlink(REPO_ROOT, link)
        except FileExistsError:
            pass
    if COLLECTIONS not in sys.path:
        sys.path.insert(0, COLLECTIONS)
    return COLLECTIONS
