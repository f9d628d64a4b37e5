# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that imports the libtorrent-rasterbar Python bindings.

Code that needs libtorrent calls ``import_libtorrent()`` when it runs, so that the modules of
this collection that never touch BitTorrent load on hosts without the library.
"""

from __future__ import annotations

import re

from ansible_collections.vmic.fleet.plugins.module_utils.errors import MissingDependencyError

MIN_VERSION = (2, 0)
INSTALL_HINT = "install the libtorrent-rasterbar Python bindings >= 2.0 (Debian: python3-libtorrent; PyPI: libtorrent)"

_MODULE = []


def libtorrent_version(module):
    """The (major, minor) version of a loaded libtorrent module, or None if it cannot be read."""
    text = getattr(module, "__version__", None) or getattr(module, "version", None) or ""
    match = re.match(r"^(\d+)\.(\d+)", str(text))
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


def import_libtorrent():
    """Return the libtorrent module or raise MissingDependencyError naming what to install."""
    if _MODULE:
        return _MODULE[0]
    try:
        import libtorrent  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise MissingDependencyError("Python module libtorrent cannot be imported (%s): %s" % (exc, INSTALL_HINT))
    version = libtorrent_version(libtorrent)
    if version is None or version < MIN_VERSION:
        raise MissingDependencyError(
            "Python module libtorrent %s is too old or has no version: %s"
            % (getattr(libtorrent, "__version__", "unknown"), INSTALL_HINT)
        )
    _MODULE.append(libtorrent)
    return libtorrent
