# shellcheck shell=bash
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Sourced by the test scripts: ROOT (the repository root), VENV (default <repo>/.venv, made by
# `make venv`), its tools first on PATH; exits with a clear message when the venv is missing.
# Usage: source "<repo>/tests/tools/venv.sh" NAME   (NAME prefixes the error message)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-${ROOT}/.venv}"
if [[ ! -x "${VENV}/bin/python" ]]; then
    echo "${1:-test}: no virtual environment at ${VENV} (run: make venv)" >&2
    exit 1
fi
export PATH="${VENV}/bin:${PATH}"
