#!/usr/bin/env bash
# Copyright: vmic.fleet contributors
# GNU General Public License v3.0+ (see LICENSE)
#
# Check the collection as its users get it (`make tarball`; part of `make test`):
#   1. the changelog fragments and changelogs/changelog.yaml pass antsibull-changelog's lint;
#   2. `ansible-galaxy collection build` makes the tarball, which holds the files users need and none
#      of the repository's development files (galaxy.yml build_ignore: tests, the test fleet, demo,
#      benchmark, caches, outputs, tool configuration);
#   3. `ansible-galaxy collection install --offline` puts it into an EMPTY collections path;
#   4. with ANSIBLE_COLLECTIONS_PATH set to that path only, `ansible-doc` renders every module of
#      plugins/modules and every role of roles/ (each role needs meta/argument_specs.yml) from the
#      installed copy, and lists no module or role more or less than the working tree has.
# Everything happens in a temporary directory that is removed on exit; the working tree is only read.
#
# Usage: tests/tools/tarball-check.sh
# Environment: VENV (default: <repo>/.venv), whose ansible-galaxy, ansible-doc and antsibull-changelog
# are used (`make venv` installs them).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${VENV:-${ROOT}/.venv}"
NAMESPACE=vmic
NAME=fleet
FQCN="${NAMESPACE}.${NAME}"

fail() {
    echo "tarball-check: $*" >&2
    exit 1
}

for tool in ansible-galaxy ansible-doc antsibull-changelog; do
    [[ -x "${VENV}/bin/${tool}" ]] || fail "no ${tool} in ${VENV}/bin (run: make venv)"
done
export PATH="${VENV}/bin:${PATH}"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/vmic-fleet-tarball.XXXXXX")"
trap 'rm -rf "${WORK}"' EXIT

# Nothing from the caller's Ansible setup: an empty configuration, a private ANSIBLE_HOME (galaxy
# cache, temporary files), no collections from Python's sys.path, no colours in the output we read.
: >"${WORK}/ansible.cfg"
export ANSIBLE_CONFIG="${WORK}/ansible.cfg"
export ANSIBLE_HOME="${WORK}/ansible-home"
export ANSIBLE_LOCAL_TEMP="${WORK}/ansible-home/tmp"
export ANSIBLE_COLLECTIONS_PATH="${WORK}/collections"
export ANSIBLE_COLLECTIONS_SCAN_SYS_PATH=false
export ANSIBLE_NOCOLOR=1
export ANSIBLE_FORCE_COLOR=0
export ANSIBLE_DEPRECATION_WARNINGS=false
unset ANSIBLE_COLLECTIONS_PATHS
mkdir -p "${ANSIBLE_COLLECTIONS_PATH}" "${ANSIBLE_LOCAL_TEMP}"

# The modules and roles of the working tree: what the installed collection must document.
mapfile -t MODULES < <(cd "${ROOT}/plugins/modules" && find . -maxdepth 1 -name '*.py' ! -name '__init__.py' -printf '%f\n' \
    | sed 's/\.py$//' | LC_ALL=C sort)
mapfile -t ROLES < <(cd "${ROOT}/roles" && find . -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | LC_ALL=C sort)
((${#MODULES[@]} > 0)) || fail "no modules in ${ROOT}/plugins/modules"
((${#ROLES[@]} > 0)) || fail "no roles in ${ROOT}/roles"
for role in "${ROLES[@]}"; do
    [[ -f "${ROOT}/roles/${role}/meta/argument_specs.yml" ]] \
        || fail "role ${role}: no meta/argument_specs.yml (ansible-doc -t role documents a role from it)"
    [[ -f "${ROOT}/roles/${role}/README.md" ]] || fail "role ${role}: no README.md"
    # The README documents every variable of the argument spec (as `name`), so a new or renamed
    # variable cannot leave it behind.
    missing="$(python3 - "${ROOT}/roles/${role}" <<'EOF'
import sys, yaml
role_dir = sys.argv[1]
with open(role_dir + "/meta/argument_specs.yml", encoding="utf-8") as f:
    options = yaml.safe_load(f)["argument_specs"]["main"].get("options") or {}
with open(role_dir + "/README.md", encoding="utf-8") as f:
    readme = f.read()
print(" ".join(name for name in options if "`%s`" % name not in readme))
EOF
)" || fail "role ${role}: cannot read meta/argument_specs.yml"
    [[ -z "${missing}" ]] || fail "role ${role}: README.md does not document ${missing} (meta/argument_specs.yml)"
done

echo "== changelog: antsibull-changelog lint"
(cd "${ROOT}" && antsibull-changelog lint && antsibull-changelog lint-changelog-yaml changelogs/changelog.yaml) \
    || fail "antsibull-changelog lint failed (changelogs/fragments/, changelogs/changelog.yaml)"

echo "== build: ansible-galaxy collection build"
ansible-galaxy collection build --output-path "${WORK}/dist" "${ROOT}" >"${WORK}/build.log" 2>&1 \
    || { cat "${WORK}/build.log" >&2; fail "ansible-galaxy collection build failed"; }
shopt -s nullglob
tarballs=("${WORK}/dist/${NAMESPACE}-${NAME}-"*.tar.gz)
shopt -u nullglob
((${#tarballs[@]} == 1)) || fail "expected one ${NAMESPACE}-${NAME}-*.tar.gz in the build output, found ${#tarballs[@]}"
TARBALL="${tarballs[0]}"
echo "   $(basename "${TARBALL}"): $(du -k "${TARBALL}" | cut -f1) KiB"

echo "== contents: users' files in, development files out"
tar -tzf "${TARBALL}" | sed 's#^\./##' | LC_ALL=C sort >"${WORK}/contents.txt"
# Directory and file patterns (extended regular expressions on the paths inside the tarball) that
# must not be there: the venv, scratch and test output, caches, tests, the test fleet, molecule,
# the demo and its inventory, the benchmark, CI and tool configuration, tarballs built earlier.
forbidden='^(dist|\.venv|\.tmp|\.cache|\.ansible|\.pytest_cache|\.mypy_cache|\.tox|\.git|\.ci|\.github|tests|extensions|demo|bench|inventory/demo)(/|$)'
forbidden+='|(^|/)(__pycache__)(/|$)|\.(pyc|pyo|log|swp|orig|rej)$|~$'
forbidden+='|^(\.gitignore|\.ansible-lint|\.ansible-lint-ignore|Makefile|pytest\.ini|changelogs/\.plugin-cache\.yaml)$'
forbidden+='|\.tar\.gz$'
if grep -E "${forbidden}" "${WORK}/contents.txt" >"${WORK}/forbidden.txt"; then
    echo "tarball-check: the tarball holds development files (add them to build_ignore in galaxy.yml):" >&2
    sed 's/^/    /' "${WORK}/forbidden.txt" >&2
    exit 1
fi
required=(MANIFEST.json FILES.json LICENSE README.md CHANGELOG.md meta/runtime.yml meta/execution-environment.yml
    bindep.txt requirements.txt changelogs/config.yaml changelogs/changelog.yaml)
for module in "${MODULES[@]}"; do required+=("plugins/modules/${module}.py"); done
for role in "${ROLES[@]}"; do required+=("roles/${role}/README.md" "roles/${role}/meta/argument_specs.yml"); done
for path in "${required[@]}"; do
    grep -qxF "${path}" "${WORK}/contents.txt" || fail "the tarball lacks ${path}"
done
echo "   $(grep -vc '/$' "${WORK}/contents.txt") files, none of them development files"

echo "== install: ansible-galaxy collection install --offline into an empty collections path"
[[ -z "$(ls -A "${ANSIBLE_COLLECTIONS_PATH}")" ]] || fail "${ANSIBLE_COLLECTIONS_PATH} is not empty"
ansible-galaxy collection install --offline -p "${ANSIBLE_COLLECTIONS_PATH}" "${TARBALL}" >"${WORK}/install.log" 2>&1 \
    || { cat "${WORK}/install.log" >&2; fail "ansible-galaxy collection install failed"; }
INSTALLED="${ANSIBLE_COLLECTIONS_PATH}/ansible_collections/${NAMESPACE}/${NAME}"
[[ -f "${INSTALLED}/MANIFEST.json" ]] || fail "nothing installed at ${INSTALLED}"

# ansible-doc exits 0 for a name it cannot find (it only warns), so each page is judged by its
# header, which names the file it was read from, and by a quiet standard error.
render() {
    local kind="$1" name="$2" header
    (cd "${WORK}" && ansible-doc -t "${kind}" "${FQCN}.${name}") >"${WORK}/doc.out" 2>"${WORK}/doc.err" \
        || { cat "${WORK}/doc.err" >&2; fail "ansible-doc -t ${kind} ${FQCN}.${name} failed"; }
    if grep -qE '\[(WARNING|ERROR|DEPRECATION WARNING)\]' "${WORK}/doc.err"; then
        cat "${WORK}/doc.err" >&2
        fail "ansible-doc -t ${kind} ${FQCN}.${name} warned"
    fi
    # Without colours ansible-doc marks some names bold with asterisks: drop them.
    header="$(head -n 1 "${WORK}/doc.out" | tr -d '*')"
    [[ "${header}" == ">"*" ${FQCN}.${name} (${INSTALLED}"* ]] \
        || fail "ansible-doc -t ${kind} ${FQCN}.${name}: not rendered from the installed copy (first line: ${header})"
    echo "   ${kind} ${FQCN}.${name}: $(wc -l <"${WORK}/doc.out") lines"
}

# The names ansible-doc lists for the collection, one a line, sorted.
listed() {
    local kind="$1"
    (cd "${WORK}" && ansible-doc -t "${kind}" --list --json "${FQCN}") \
        | python3 -c 'import json, sys; print("\n".join(sorted(k.rsplit(".", 1)[1] for k in json.load(sys.stdin))))'
}

echo "== ansible-doc: every module and role, from ${ANSIBLE_COLLECTIONS_PATH} only"
for module in "${MODULES[@]}"; do render module "${module}"; done
for role in "${ROLES[@]}"; do render role "${role}"; done
[[ "$(listed module)" == "$(printf '%s\n' "${MODULES[@]}")" ]] \
    || fail "ansible-doc lists other modules than plugins/modules: $(listed module | tr '\n' ' ')"
[[ "$(listed role)" == "$(printf '%s\n' "${ROLES[@]}")" ]] \
    || fail "ansible-doc lists other roles than roles/: $(listed role | tr '\n' ' ')"

echo "tarball-check: $(basename "${TARBALL}") installs into an empty collections path;" \
    "ansible-doc renders its ${#MODULES[@]} modules and ${#ROLES[@]} roles"
