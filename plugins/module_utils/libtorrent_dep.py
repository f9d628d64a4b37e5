# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place that imports the libtorrent-rasterbar Python bindings.

Code that needs libtorrent calls ``import_libtorrent()`` when it runs, so that the modules of
this collection that never touch BitTorrent load on hosts without the library.
"""

from __future__ import annotations

import traceback

from ansible_collections.vmic.fleet.plugins.module_utils.dependencies import MissingLibraryError, library_version

MIN_VERSION = (2, 0)
LIBRARY = "libtorrent >= 2.0"
REASON = "for BitTorrent torrents and the engine"
INSTALL_HINT = "the libtorrent-rasterbar Python bindings; Debian: python3-libtorrent; PyPI: libtorrent"

_MODULE = []


def import_libtorrent():
    """Return the libtorrent module or raise MissingLibraryError naming what to install."""
    if _MODULE:
        return _MODULE[0]
    try:
        import libtorrent  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        raise MissingLibraryError(LIBRARY, REASON, INSTALL_HINT, "it cannot be imported (%s)" % exc, traceback.format_exc())
    version = library_version(libtorrent)
    if version is None or version < MIN_VERSION:
        raise MissingLibraryError(LIBRARY, REASON, INSTALL_HINT,
                                  "version %s is too old or unreadable" % getattr(libtorrent, "__version__", "unknown"))
    _MODULE.append(libtorrent)
    return libtorrent
