# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Missing Python libraries: the error each library's gate raises, and how a module reports it.

Each library has one gate that imports it and checks its version (``crypto_dep`` for cryptography,
``libtorrent_dep`` for libtorrent). A gate raises :class:`MissingLibraryError`; a module turns any
MissingDependencyError into ``fail_json`` with :func:`fail_missing_dependency`, which gives Ansible's
usual ``missing_required_lib`` message for a library. Nothing here imports Ansible until a module
calls that function, so the gates load where Ansible is not installed (the engine service).
"""

from __future__ import annotations

import re

from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError


class MissingLibraryError(MissingDependencyError):
    """A Python library that cannot be imported, or is too old.

    ``library`` is what to install (``"cryptography >= 3.2"``), ``reason`` what it is needed for, ``hint``
    the package names, ``import_error`` the traceback of the failed import (or None).
    """

    def __init__(self, library, reason, hint, problem, import_error=None):
        super().__init__("the Python library %s is needed %s: %s; install it (%s)" % (library, reason, problem, hint))
        self.library = library
        self.reason = reason
        self.hint = hint
        self.import_error = import_error


def library_version(module):
    """The (major, minor) version of a loaded library module, from its ``__version__`` (or ``version``); None if unreadable."""
    text = getattr(module, "__version__", None) or getattr(module, "version", None) or ""
    match = re.match(r"^(\d+)\.(\d+)", str(text))
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def fail_missing_dependency(module, exc):
    """Fail the Ansible ``module`` for a MissingDependencyError ``exc``: ``missing_required_lib`` for a Python library
    (with the import traceback), the error's own message for a command."""
    if isinstance(exc, MissingLibraryError):
        from ansible.module_utils.basic import missing_required_lib  # pylint: disable=import-outside-toplevel
        module.fail_json(msg="%s (%s)" % (missing_required_lib(exc.library, reason=exc.reason), exc.hint), exception=exc.import_error)
    module.fail_json(msg=str(exc))
