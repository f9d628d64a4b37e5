#!/usr/bin/env bash
# Installs the Debian packages that the tests and the demo need (root; only missing ones).
# Used by .ci/run, `make demo`, `make bench` and `make scale`.
set -euo pipefail

export DEBIAN_FRONTEND=noninteractive

APT_PACKAGES=(
    # Python: venv for .venv and ansible-test's sanity environments, headers for any sdist build
    python3 python3-venv python3-dev python3-pip-whl
    git make rsync curl ca-certificates locales
    # sanity: shell scripts
    shellcheck
    # image signing and verification, transfer engines, tracker
    openssl opentracker rtorrent
    # Debian's libtorrent bindings (2.0.8): tests/engines runs an engine on them next to the venv's 2.1 wheel
    python3-libtorrent
    # test fleet: images, Debian roots (debootstrap from Debian's mirror), containers reached over
    # SSH, network namespaces and shaped links (ip, tc)
    qemu-utils debootstrap debian-archive-keyring systemd-container openssh-client iproute2
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
    if [[ "$(dpkg-query -W -f '${Status}' "${package}" 2>/dev/null || true)" != "install ok installed" ]]; then
        missing+=("${package}")
    fi
done
if [[ ${#missing[@]} -gt 0 ]]; then
    echo "install-deps: installing ${missing[*]}"
    apt-get update
    apt-get install -y "${missing[@]}"
else
    echo "install-deps: all Debian packages present"
fi

# ansible-test prefers this locale and warns without it.
if ! locale -a 2>/dev/null | grep -qi '^en_US\.utf-\?8$'; then
    localedef -i en_US -f UTF-8 en_US.UTF-8
fi
