"""Make the collection importable as ``ansible_collections.vmic.fleet`` for pytest.

The repository root is the collection root; a symlink under ``.tmp/collections`` gives it the
import path that Ansible uses, so module_utils import each other exactly as they do on a host.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".tmp", "collections")
LINK = os.path.join(COLLECTIONS, "ansible_collections", "vmic", "fleet")

if not os.path.exists(LINK):
    os.makedirs(os.path.dirname(LINK), exist_ok=True)
    try:
        os.symlink(ROOT, LINK)
    except FileExistsError:
        pass
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
