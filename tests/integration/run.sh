#!/usr/bin/env bash
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Integration test runner: runs tests/integration/targets/<name>/run.sh for every target (or only
# the targets named as arguments), each from its own directory, and fails if any of them fails.
#
# What a target's run.sh can rely on:
#   PATH                      starts with the venv's bin (ansible-playbook, python, ...)
#   ANSIBLE_COLLECTIONS_PATH  a directory in which the working tree is ansible_collections/vmic/fleet
#   VMIC_FLEET_ROOT           the repository root
#   VMIC_FLEET_TARGET_TMP     an empty scratch directory of its own, kept after the run for inspection
# A target cleans up whatever it starts (processes, network namespaces, mounts), on failure too.
#
# Usage: tests/integration/run.sh [target ...]
# Environment: VENV (default: <repo>/.venv)
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/../tools/venv.sh" integration
TARGETS_DIR="${ROOT}/tests/integration/targets"
COLLECTIONS="${ROOT}/.tmp/collections"
LINK="${COLLECTIONS}/ansible_collections/vmic/fleet"
SCRATCH="${ROOT}/.tmp/integration"

# Same layout as tests/conftest.py: Ansible's collection loader follows the symlink.
mkdir -p "$(dirname "${LINK}")"
if [[ ! -e "${LINK}" ]]; then
    ln -sfn "${ROOT}" "${LINK}"
fi

export ANSIBLE_COLLECTIONS_PATH="${COLLECTIONS}"
export VMIC_FLEET_ROOT="${ROOT}"

targets=()
if [[ $# -gt 0 ]]; then
    for name in "$@"; do
        if [[ ! -f "${TARGETS_DIR}/${name}/run.sh" ]]; then
            echo "integration: no target ${name} (expected ${TARGETS_DIR}/${name}/run.sh)" >&2
            exit 1
        fi
        targets+=("${name}")
    done
elif [[ -d "${TARGETS_DIR}" ]]; then
    for script in "${TARGETS_DIR}"/*/run.sh; do
        [[ -f "${script}" ]] || continue
        targets+=("$(basename "$(dirname "${script}")")")
    done
fi

if [[ ${#targets[@]} -eq 0 ]]; then
    echo "integration: no targets in ${TARGETS_DIR}"
    exit 0
fi

passed=0
failed=()
for name in "${targets[@]}"; do
    tmp="${SCRATCH}/${name}"
    rm -rf "${tmp}"
    mkdir -p "${tmp}"
    echo "=== integration target ${name}"
    start=${SECONDS}
    status=0
    (cd "${TARGETS_DIR}/${name}" && VMIC_FLEET_TARGET_TMP="${tmp}" bash ./run.sh) </dev/null || status=$?
    if [[ ${status} -eq 0 ]]; then
        passed=$((passed + 1))
        echo "=== integration target ${name}: passed in $((SECONDS - start)) s"
    else
        failed+=("${name}")
        echo "=== integration target ${name}: FAILED (exit ${status}) after $((SECONDS - start)) s"
    fi
done

if [[ ${#failed[@]} -gt 0 ]]; then
    echo "integration: failed targets: ${failed[*]}"
fi
echo "integration: ${passed} passed, ${#failed[@]} failed"
[[ ${#failed[@]} -eq 0 ]]
