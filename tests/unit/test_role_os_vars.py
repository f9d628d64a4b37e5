"""The roles' OS family variables (roles/<role>/vars/Debian.yml and RedHat.yml) and site.yml's trust store.

Each role loads vars/<ansible_os_family>.yml first (tasks/set_vars.yml). Only Debian 12 runs in the
test fleet and molecule, so these checks keep the untested family complete (the same keys, every
one the role uses) and the tested one unchanged (the Debian values are those the roles hard-coded
before the OS families).
"""

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLES = sorted(path.parent.parent.name for path in ROOT.glob("roles/*/vars/Debian.yml"))
FAMILIES = ("Debian", "RedHat")

# What the roles installed and wrote before they knew OS families (all Debian): the tested path.
DEBIAN_BEFORE = {
    "engine": {"__engine_packages": ["python3", "python3-libtorrent"]},
    "hypervisor": {"__hypervisor_packages": ["openssl", "python3-cryptography", "python3-jmespath", "python3-libtorrent"]},
    "opentracker": {"__opentracker_packages": ["opentracker"]},
    "repository": {
        "__repository_packages": ["nginx-light"],
        "__repository_site_file": "/etc/nginx/sites-available/vmic-repository.conf",
        "__repository_site_link": "/etc/nginx/sites-enabled/vmic-repository.conf",
        "__repository_default_site": "/etc/nginx/sites-enabled/default",
    },
    "rtorrent": {"__rtorrent_packages": ["rtorrent"]},
}
# The EL9 choices the READMEs describe: EPEL 9's libtorrent bindings and rtorrent, no opentracker
# package (the role stops until the site names one), nginx's conf.d without a link or default site file.
REDHAT = {
    "engine": {"__engine_packages": ["python3", "rb_libtorrent-python3"]},
    "hypervisor": {"__hypervisor_packages": ["openssl", "python3-cryptography", "python3-jmespath", "rb_libtorrent-python3"]},
    "opentracker": {"__opentracker_packages": []},
    "repository": {
        "__repository_packages": ["nginx"],
        "__repository_site_file": "/etc/nginx/conf.d/vmic-repository.conf",
        "__repository_site_link": "",
        "__repository_default_site": "",
    },
    "rtorrent": {"__rtorrent_packages": ["rtorrent"]},
}


def load(path):
    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream)


def os_vars(role, family):
    return load(ROOT / "roles" / role / "vars" / f"{family}.yml")


def role_texts(role):
    """Every file of the role that uses variables (not the OS family files themselves), by path."""
    base = ROOT / "roles" / role
    paths = [*base.glob("tasks/*.yml"), *base.glob("handlers/*.yml"), *base.glob("templates/*.j2"),
             *base.glob("defaults/*.yml"), base / "vars" / "main.yml"]
    return {path.relative_to(ROOT).as_posix(): path.read_text(encoding="utf-8") for path in paths if path.is_file()}


def test_every_role_has_os_family_vars():
    assert ROLES == sorted(path.name for path in (ROOT / "roles").iterdir() if path.is_dir())
    assert ROLES == sorted(DEBIAN_BEFORE)


@pytest.mark.parametrize("role", ROLES)
def test_role_loads_its_os_family_vars_before_anything_else(role):
    first = load(ROOT / "roles" / role / "tasks" / "main.yml")[0]
    assert first["ansible.builtin.import_tasks"] == "set_vars.yml"
    assert first["tags"] == ["always"]      # --tags <role>_install still gets the OS family's packages
    loader = load(ROOT / "roles" / role / "tasks" / "set_vars.yml")[-1]
    assert loader["ansible.builtin.include_vars"]["file"] == "{{ ansible_facts.os_family }}.yml"
    # One text for every role, so a fix reaches them all.
    assert (ROOT / "roles" / role / "tasks" / "set_vars.yml").read_bytes() == (ROOT / "roles/engine/tasks/set_vars.yml").read_bytes()


@pytest.mark.parametrize("role", ROLES)
def test_os_family_files_define_the_same_keys(role):
    debian, redhat = os_vars(role, "Debian"), os_vars(role, "RedHat")
    assert debian and set(debian) == set(redhat)
    # Internal names: include_vars outranks the inventory, so a user-facing name would make an inventory value useless.
    assert all(name.startswith(f"__{role}_") for name in debian)


@pytest.mark.parametrize("role", ROLES)
def test_every_os_variable_used_is_defined_for_each_family(role):
    used = {}
    for path, text in role_texts(role).items():
        for name in re.findall(rf"\b__{role}_\w+", text):
            used.setdefault(name, path)
    for family in FAMILIES:
        defined = set(os_vars(role, family))
        assert {name: path for name, path in used.items() if name not in defined} == {}, f"not in vars/{family}.yml"
        assert defined - set(used) == set(), f"vars/{family}.yml defines variables no task or template uses"


@pytest.mark.parametrize("role", ROLES)
def test_os_default_not_shadowed_by_role_defaults_or_validation(role):
    # A user variable whose default is the OS family's (X | default(__X)) must not be set by
    # defaults/main.yml (every family would get the Debian value) nor have an argument spec default;
    # and defaults/main.yml must not read an OS variable: the role's argument validation templates the
    # defaults before tasks/set_vars.yml has loaded it.
    base = ROOT / "roles" / role
    defaults = load(base / "defaults" / "main.yml") or {}
    options = load(base / "meta" / "argument_specs.yml")["argument_specs"]["main"]["options"]
    overridable = set()
    for text in role_texts(role).values():
        overridable.update(re.findall(rf"\b({role}_\w+) \| default\(__{role}_\w+\)", text))
    for name in overridable:
        assert name not in defaults
        assert name in options and "default" not in options[name]
    assert not any(f"__{role}_" in str(value) for value in defaults.values())


@pytest.mark.parametrize("role", ROLES)
def test_debian_values_are_those_before_os_families(role):
    assert os_vars(role, "Debian") == DEBIAN_BEFORE[role]


@pytest.mark.parametrize("role", ROLES)
def test_redhat_values_are_the_el9_choices(role):
    assert os_vars(role, "RedHat") == REDHAT[role]


def test_missing_opentracker_package_stops_the_role():
    # EL9 has no opentracker: an empty package list must stop the role before anything is written.
    checks = load(ROOT / "roles/opentracker/tasks/preflight.yml")
    conditions = [condition for task in checks for condition in task.get("ansible.builtin.assert", {}).get("that", [])]
    assert "opentracker_packages | default(__opentracker_packages) | length > 0" in conditions


def trust_play():
    plays = load(ROOT / "playbooks" / "site.yml")
    return next(play for play in plays if play.get("name") == "Trust the site's TLS CA")


def test_site_ca_goes_to_each_os_family_trust_store():
    play = trust_play()
    stores = play["vars"]["site_ca_trust_stores"]
    assert stores == {
        # what site.yml did before the OS families
        "Debian": {"anchor": "/usr/local/share/ca-certificates/vmic-site-ca.crt", "refresh": ["update-ca-certificates"]},
        "RedHat": {"anchor": "/etc/pki/ca-trust/source/anchors/vmic-site-ca.crt", "refresh": ["update-ca-trust", "extract"]},
    }
    install = next(task for task in play["tasks"] if task["name"] == "Install the site's TLS CA certificate")
    assert "{{ site_ca_trust_store.anchor }}" in install["loop"]
    assert play["handlers"][0]["ansible.builtin.command"]["argv"] == "{{ site_ca_trust_store.refresh }}"
    # The play gathers no facts: it gathers the OS family itself before the first task that needs it.
    assert play["gather_facts"] is False
    assert play["tasks"][0]["ansible.builtin.setup"]["gather_subset"][-2:] == ["distribution", "pkg_mgr"]
