#!/usr/bin/env bash
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
#
# Run `ansible-test sanity` on the collection without Docker and without access to the host that
# ansible-test normally downloads get-pip.py from.
#
# ansible-test needs the collection at .../ansible_collections/vmic/fleet and refuses a symlink, so
# the working tree (tracked and untracked files, minus what .gitignore excludes) is copied afresh
# to .tmp/ansible-test/ansible_collections/vmic/fleet on every run.
# Sanity tests that need Python packages run in virtual environments that ansible-test creates
# under ~/.ansible/test/venv; the pip they start with comes from tests/tools/get_pip_offline.py.
#
# Usage: tests/tools/ansible-test-sanity.sh [extra ansible-test sanity arguments]
# Environment: VENV (default: <repo>/.venv)
set -euo pipefail

# shellcheck source=/dev/null
source "$(dirname "${BASH_SOURCE[0]}")/venv.sh" ansible-test-sanity
PYTHON="${VENV}/bin/python"
COPY_BASE="${ROOT}/.tmp/ansible-test"
DEST="${COPY_BASE}/ansible_collections/vmic/fleet"

# ansible-test sets up the collection search path for the copy itself.
unset ANSIBLE_COLLECTIONS_PATH ANSIBLE_COLLECTIONS_PATHS

list_sources() {
    # NUL-separated paths, relative to ROOT, of the files that make up the working tree.
    if git -C "${ROOT}" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "${ROOT}" ls-files -z --cached --others --exclude-standard
    else
        (cd "${ROOT}" && find . \
            \( -path ./.git -o -path ./.venv -o -path ./.tmp -o -path ./tests/output \
               -o -name __pycache__ -o -name .pytest_cache \) -prune \
            -o \( -type f -o -type l \) -printf '%P\0')
    fi
}

refresh_copy() {
    rm -rf "${DEST}"
    mkdir -p "${DEST}"
    local path
    list_sources | while IFS= read -r -d '' path; do
        # Tracked files deleted in the working tree are listed by git but no longer exist.
        if [[ -e "${ROOT}/${path}" || -L "${ROOT}/${path}" ]]; then
            printf '%s\0' "${path}"
        fi
    done | (cd "${ROOT}" && xargs -0 -r cp -a --parents -t "${DEST}" --)
    # ansible-test lists the files of a collection with git, searching upwards from the collection
    # root; without a repository of its own the copy would be seen through the enclosing work tree,
    # which ignores .tmp/, and no file would be tested. An empty repository makes every file of the
    # copy an untracked, testable file.
    git -c init.defaultBranch=main init --quiet "${DEST}"
}

install_get_pip_standin() {
    # ansible-test looks for ~/.ansible/test/cache/get_pip_<version with dots as underscores>.py;
    # the versions are the pip pins in ansible_test/_internal/python_requirements.py.
    local source versions version cache
    source="$("${PYTHON}" -c 'import ansible_test, os; print(os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py"))')"
    versions="$(grep -oE "pip='[0-9][0-9.]*'" "${source}" | grep -oE "[0-9][0-9.]*" | sort -u)"
    if [[ -z "${versions}" ]]; then
        echo "ansible-test-sanity: no pip version pin found in ${source}" >&2
        exit 1
    fi
    cache="${HOME}/.ansible/test/cache"
    mkdir -p "${cache}"
    for version in ${versions}; do
        cp "${ROOT}/tests/tools/get_pip_offline.py" "${cache}/get_pip_${version//./_}.py"
    done
}

refresh_copy
install_get_pip_standin

python_version="$("${PYTHON}" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"

cd "${DEST}"
exec ansible-test sanity --local --python "${python_version}" --color no "$@"
