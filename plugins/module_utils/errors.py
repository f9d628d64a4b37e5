# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Exceptions shared by the vmic.fleet module_utils.

Every error names the object it is about and the reason, so that a module can hand
``str(exc)`` to ``fail_json`` unchanged.
"""

from __future__ import annotations


class VmicError(Exception):
    """Base class of every error raised by vmic.fleet module_utils."""


class LimitError(VmicError):
    """Input exceeds a hard size, count or nesting limit."""


class ImageListError(VmicError):
    """An image list could not be parsed or does not follow the schema."""


class SignatureError(VmicError):
    """An S/MIME envelope could not be processed or signed."""


class TrustError(VmicError):
    """Trust anchors or the endorser registry are missing or malformed."""


class PolicyError(VmicError):
    """The site approval policy is malformed."""


class FetchError(VmicError):
    """A remote object could not be fetched."""


class TorrentError(VmicError):
    """A .torrent could not be made or does not match the signed list."""


class EngineError(VmicError):
    """The BitTorrent engine failed or could not be reached."""


class StoreError(VmicError):
    """The image store could not be changed."""


class MissingDependencyError(VmicError):
    """A Python library or a command this code needs is not installed."""
