"""Run a module of the collection as Ansible does (a child process with its arguments file) and read its JSON result."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".tmp", "collections")


def run_module(name, args, workdir, check_mode=False, pythonpath=()):
    """The result of module ``name`` with ``args`` (a dict); the arguments file is written in ``workdir``.

    ``pythonpath`` entries come before the collection (to hide a library, for example).
    """
    path = os.path.join(str(workdir), "%s-args.json" % name)
    with open(path, "w") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": dict(args, _ansible_check_mode=check_mode)}, handle)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(list(pythonpath) + [COLLECTIONS]))
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "plugins", "modules", name + ".py"), path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, check=False)
    try:
        return json.loads(proc.stdout.decode())
    except ValueError:
        raise AssertionError("%s printed no JSON (exit %d): %s %s" % (name, proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:]))
