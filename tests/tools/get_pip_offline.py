# -*- coding: utf-8 -*-
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Offline stand-in for the get-pip.py script that ansible-test downloads.

ansible-test bootstraps pip into the empty virtual environments of its sanity tests by running a
get-pip.py script fetched from a host that this project's machines cannot reach. It looks for a
cached copy first (``~/.ansible/test/cache/get_pip_<version>.py``); ``tests/tools/ansible-test-sanity.sh``
places this file there.

It does what get-pip.py does, with the tools Python ships: ``ensurepip`` installs the bundled pip,
which then installs the requested pip version from the configured package index. The arguments are
the ones get-pip.py accepts: pip install arguments plus ``--no-setuptools`` and ``--no-wheel``.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

GET_PIP_ONLY_OPTIONS = ('--no-setuptools', '--no-wheel', '--no-pip')


def run(argv):
    """Run one command with the running interpreter, failing on a non-zero exit."""
    subprocess.run([sys.executable] + argv, check=True)


def main():
    """Bootstrap pip, then install the requested packages; honour get-pip's exclusion options."""
    args = sys.argv[1:]
    pip_args = [arg for arg in args if arg not in GET_PIP_ONLY_OPTIONS]
    # ensurepip may bring setuptools along; get-pip installs only what it was asked for.
    unwanted = [name for option, name in (('--no-setuptools', 'setuptools'), ('--no-wheel', 'wheel'))
                if option in args and importlib.util.find_spec(name) is None]

    run(['-m', 'ensurepip', '--default-pip'])
    run(['-m', 'pip', 'install', '--disable-pip-version-check', '--upgrade'] + pip_args)

    importlib.invalidate_caches()
    leftovers = [name for name in unwanted if importlib.util.find_spec(name) is not None]
    if leftovers:
        run(['-m', 'pip', 'uninstall', '--disable-pip-version-check', '--yes'] + leftovers)


if __name__ == '__main__':
    main()
