# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The command that runs the libtorrent engine service: one per hypervisor, downloads images and keeps seeding them.

Run::

    python3 -m ansible_collections.vmic.fleet.plugins.module_utils.engine_service --config FILE

(PYTHONPATH must contain the directory that holds ``ansible_collections/``), or call ``main(argv)``.
It logs to stderr and exits cleanly (resume data saved) on SIGTERM or SIGINT.  The service itself
is the private package ``_engine`` (docs/engine.md): its configuration keys are listed in
``_engine/config.py``, its protocol in ``_engine/protocol.py``.  ``load_config`` is here too, for
the engine role that validates a configuration before it writes it.
"""

from __future__ import annotations

import logging
import signal
import sys

from ansible_collections.vmic.fleet.plugins.module_utils._engine.config import load_config
from ansible_collections.vmic.fleet.plugins.module_utils._engine.service import LOG, EngineService
from ansible_collections.vmic.fleet.plugins.module_utils.errors import VmicError

__all__ = ["load_config", "main"]

USAGE = "usage: vmic-engine --config FILE (the JSON configuration of the vmic.fleet libtorrent engine service)"


def config_path(argv):
    """The FILE of ``--config FILE`` (or ``--config=FILE``), the only argument; None for anything else.

    Not argparse: the service runs on every hypervisor, and argparse would stay in its memory (about 0.4 MiB).
    """
    if len(argv) == 2 and argv[0] == "--config" and argv[1]:
        return argv[1]
    if len(argv) == 1 and argv[0].startswith("--config=") and len(argv[0]) > len("--config="):
        return argv[0][len("--config="):]
    return None


def main(argv=None):
    """Run the engine service until SIGTERM or SIGINT; return the exit status (2: bad arguments)."""
    path = config_path(sys.argv[1:] if argv is None else list(argv))
    if path is None:
        sys.stderr.write(USAGE + "\n")
        return 2
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(path)
        logging.getLogger().setLevel(config["log_level"].upper())
        service = EngineService(config)
        signal.signal(signal.SIGTERM, service.stop)
        signal.signal(signal.SIGINT, service.stop)
        service.start()
    except (VmicError, OSError, RuntimeError) as exc:
        LOG.error("engine not started: %s", exc)
        return 1
    service.run()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
