# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The libtorrent engine service, one concept per file (private: import the modules, not this package).

- ``config``: the engine's JSON configuration, its defaults and its validation;
- ``statedir``: the files of the state directory (torrent bytes, resume data, per-torrent state);
- ``accounting``: pure functions that attribute downloaded bytes to peers, seeds and web seeds,
  and say how much is verified and when a torrent completed;
- ``protocol``: the JSON-lines unix-socket server, the request helper every engine client uses
  (also rtorrent's SCGI transport) and the request checks;
- ``session``: the libtorrent settings and peer classes of the engine's session;
- ``service``: the service itself: session, torrents, alert handlers and requests.

``plugins/module_utils/engine_service.py`` is the entry point that starts it.
"""
