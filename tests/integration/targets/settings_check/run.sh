#!/usr/bin/env bash
# The settings check (playbooks/validate.yml) against the example inventory, run alone on the
# controller: a misspelt setting, a renamed one and a hypervisor outside every cluster are refused
# with their names; the inventory as shipped passes. Nothing connects to a host.
set -euo pipefail

tmp="${VMIC_FLEET_TARGET_TMP:?}"
root="${VMIC_FLEET_ROOT:?}"
export ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false ANSIBLE_NOCOLOR=1

check() {
    ansible-playbook -i "${root}/inventory/example" "${root}/playbooks/validate.yml" \
        -e "ansible_python_interpreter=$(command -v python)" "$@"
}

refused() {
    local name="$1" expected="$2"
    shift 2
    if check "$@" >"${tmp}/${name}.log" 2>&1; then
        echo "settings_check: ${name}: the check passed, but it must refuse" >&2
        exit 1
    fi
    if ! grep -q -- "${expected}" "${tmp}/${name}.log"; then
        echo "settings_check: ${name}: refused without naming '${expected}':" >&2
        tail -20 "${tmp}/${name}.log" >&2
        exit 1
    fi
    echo "settings_check: ${name} refused (${expected})"
}

check >"${tmp}/shipped.log" 2>&1 || { tail -30 "${tmp}/shipped.log" >&2; exit 1; }
echo "settings_check: the example inventory as shipped passes"

refused misspelt_setting "vmic_rollout_batchs" -e '{"vmic_rollout_batchs": [1]}'
refused renamed_setting "is now vmic_store_dir" -e hypervisor_store_dir=/x

# a hypervisor in no cluster_* group, checked as rollout.yml and status.yml import the check
cat >"${tmp}/stray.yml" <<'YAML'
hypervisors:
  hosts:
    hv-stray.example.org: {}
YAML
cat >"${tmp}/check-profiles.yml" <<YAML
- name: The settings check as rollout.yml imports it
  ansible.builtin.import_playbook: ${root}/playbooks/validate.yml
  vars:
    vmic_check_hosts: hypervisors
    vmic_check_profiles: true
YAML
if ansible-playbook -i "${root}/inventory/example" -i "${tmp}/stray.yml" "${tmp}/check-profiles.yml" \
        -e "ansible_python_interpreter=$(command -v python)" >"${tmp}/stray.log" 2>&1; then
    echo "settings_check: a hypervisor without a cluster passed" >&2
    exit 1
fi
grep -q "without a cluster: hv-stray.example.org" "${tmp}/stray.log" || { tail -20 "${tmp}/stray.log" >&2; exit 1; }
echo "settings_check: clusterless_hypervisor refused (hv-stray.example.org)"
