#!/usr/bin/env bash
# Round trip of the trust core on localhost: sign -> verify -> approve -> select, tamper -> refused,
# rollback -> refused, second run -> nothing changed. Real PKI (cryptography), real openssl.
set -euo pipefail

tmp="${VMIC_FLEET_TARGET_TMP:?}"
root="${VMIC_FLEET_ROOT:?}"

python - "${root}" "${tmp}" <<'PY'
import json, os, sys
root, tmp = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(root, "tests", "unit"))
from pki import TestPKI

pki = TestPKI(os.path.join(tmp, "pki"))
images = os.path.join(tmp, "images")
os.makedirs(images, exist_ok=True)
for name, size in (("alpha.img", 300000), ("beta.img", 200000)):
    with open(os.path.join(images, name), "wb") as handle:
        handle.write(os.urandom(size))
variables = {
    "tmp": tmp,
    "ca_path": pki.ca_path,
    "cert": pki.good.cert_path,
    "key": pki.good.key_path,
    "endorser_dn": pki.good.dn,
    "endorser_ca": pki.good.issuer_dn,
    "other_cert": pki.other.cert_path,
    "other_key": pki.other.key_path,
    "images_dir": images,
}
with open(os.path.join(tmp, "vars.json"), "w") as handle:
    json.dump(variables, handle)
PY

export ANSIBLE_LOCALHOST_WARNING=false ANSIBLE_INVENTORY_UNPARSED_WARNING=false ANSIBLE_NOCOLOR=1
ansible-playbook -i localhost, -c local roundtrip.yml -e "@${tmp}/vars.json" -e "ansible_python_interpreter=$(command -v python)" --diff

# new_images refuse without a recorded approved set fails before any host is touched (it would
# withdraw every image); with accept a missing set changes nothing.
playbooks="${root}/playbooks"
if ansible-playbook -i localhost, -c local "${playbooks}/approved_set.yml" -e "ansible_python_interpreter=$(command -v python)" \
        -e '{"vmic_policy": {"new_images": "refuse"}}' -e "vmic_policy_state_dir=${tmp}/no-such-dir" >"${tmp}/refuse.log" 2>&1; then
    echo "approved_set.yml passed with new_images refuse and no approved set" >&2
    exit 1
fi
grep -q "there is no approved set" "${tmp}/refuse.log"
ansible-playbook -i localhost, -c local "${playbooks}/approved_set.yml" -e "ansible_python_interpreter=$(command -v python)" \
    -e '{"vmic_policy": {"new_images": "accept"}}' -e "vmic_policy_state_dir=${tmp}/no-such-dir" >"${tmp}/accept.log" 2>&1
ansible-playbook -i localhost, -c local "${playbooks}/approved_set.yml" -e "ansible_python_interpreter=$(command -v python)" \
    -e '{"vmic_policy": {"new_images": "refuse"}}' -e "vmic_policy_state_dir=${tmp}/policy" >"${tmp}/known.log" 2>&1
echo "approved_set.yml: refuse without an approved set fails; accept without one and refuse with one pass"
