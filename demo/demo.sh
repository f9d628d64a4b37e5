#!/usr/bin/env bash
# `make demo`: the main job of vmic.fleet, end to end, on a fleet built on this machine.
#
#   1. install what is needed (Debian packages, .venv)
#   2. make a demo PKI (a CA, two endorsers, the repository's TLS certificate)
#   3. make three small qcow2 disk images and two catalogues (endorsers cern-demo and desy-demo)
#   4. boot the demo fleet: repo, tracker, hv01..hv06 in clusters cluster_a and cluster_b
#      (systemd-nspawn hosts with real systemd and sshd, each in its own network namespace)
#   5. site.yml: deploy the repository (HTTPS + seed), the tracker, the hypervisors (engine, store)
#   6. publish.yml: sign both lists with torrents, publish, seed, whitelist the approved hashes
#   7. rollout.yml: every hypervisor downloads at once, activation in batches; fleet report
#   8. status.yml: every host holds exactly its approved, selected images
#   9. a second change: a new version of "Debian base", the approval of "SL worker node" withdrawn;
#      rollout --check --diff shows it, then it is rolled out and checked again
# `make demo-clean` removes the fleet and the demo's files.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEMO="${ROOT}/.tmp/demo"
FLEET=vmic-demo
VENV="${ROOT}/.venv"
PY="${VENV}/bin/python"
START=${SECONDS}

step() { printf '\n\033[1m==> [%3ds] %s\033[0m\n' "$((SECONDS - START))" "$*"; }

cd "${ROOT}"
step "Installing Debian packages (only missing ones)"
bash tests/tools/install-deps.sh

step "Python environment (.venv)"
make --no-print-directory venv collection-link

export PATH="${VENV}/bin:${PATH}"
export ANSIBLE_COLLECTIONS_PATH="${ROOT}/.tmp/collections"
export ANSIBLE_CONFIG="${ROOT}/demo/ansible.cfg"
mkdir -p "${DEMO}"

step "Demo PKI"
"${PY}" demo/make_pki.py "${DEMO}/pki"

step "Disk images and catalogues (stage 1)"
"${PY}" demo/make_content.py "${DEMO}" 1

if "${PY}" tests/testfleet/fleetctl.py show --name "${FLEET}" >/dev/null 2>&1; then
    step "The demo fleet is running already: using it (make demo-clean starts over)"
else
    step "Booting the demo fleet (first run: builds a Debian base root with debootstrap, about a minute)"
    "${PY}" tests/testfleet/fleetctl.py create --name "${FLEET}" --hosts repo,tracker,hv01..hv06 \
        --group cluster_a=hv01..hv03 --group cluster_b=hv04..hv06 --rate-mbit 100 >/dev/null
fi
FLEET_INVENTORY="$("${PY}" tests/testfleet/fleetctl.py inventory --name "${FLEET}")"
playbook() { ansible-playbook -i "${FLEET_INVENTORY}" -i inventory/demo "$@"; }

step "Deploying the fleet (playbooks/site.yml)"
[[ -n "${VMIC_DEMO_SKIP_SITE:-}" ]] || playbook playbooks/site.yml

step "Publishing the signed image lists (playbooks/publish.yml)"
playbook playbooks/publish.yml

step "Rolling out (playbooks/rollout.yml)"
playbook playbooks/rollout.yml

step "Fleet status (playbooks/status.yml)"
playbook playbooks/status.yml

step "Second change: Debian base v2 from the endorser; SL worker approval withdrawn by the site"
"${PY}" demo/make_content.py "${DEMO}" 2
playbook playbooks/publish.yml -e @demo/change2.yml

step "What the rollout would change (rollout.yml --check --diff)"
playbook playbooks/rollout.yml -e @demo/change2.yml --check --diff

step "Rolling the change out"
playbook playbooks/rollout.yml -e @demo/change2.yml

step "Fleet status after the change"
playbook playbooks/status.yml -e @demo/change2.yml

step "Done in $((SECONDS - START)) s. The fleet keeps running: ssh -F /run/vmic-testfleet/${FLEET}/ssh_config hv01; make demo-clean removes it."
