#!/usr/bin/env bash
# `make demo-clean`: remove the demo fleet (containers, namespaces) and the demo's files.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${ROOT}/.venv/bin/python"
[[ -x "${PY}" ]] || PY=python3
"${PY}" "${ROOT}/tests/testfleet/fleetctl.py" destroy --name vmic-demo
rm -rf "${ROOT}/.tmp/demo"
echo "demo-clean: the demo fleet and .tmp/demo are gone (the cached Debian base root is kept)"
