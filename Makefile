# vmic.fleet — build and test entry points (repository root = collection root).
#
#   make venv         create .venv with the system python3 and install tests/requirements.txt
#   make test         everything CI runs: $(TEST_TARGETS), stopping at the first failure
#   make units        pytest tests/unit (options and markers: pytest.ini)
#   make engines      pytest tests/engines: real engine daemons on loopback (libtorrent service, rtorrent, opentracker)
#   make swarm        pytest tests/swarm: engines in network namespaces on this machine (root)
#   make sanity       ansible-test sanity on a fresh copy of the working tree (tests/tools/ansible-test-sanity.sh)
#   make lint         ansible-lint, profile and offline settings in .ansible-lint
#   make tarball      build the collection tarball, install it into an empty path, ansible-doc every module and role
#   make integration  every tests/integration/targets/*/run.sh (tests/integration/run.sh)
#   make fleet        pytest tests/fleet: the systemd-nspawn test fleet (root)
#   make molecule     molecule test --all (extensions/molecule, on the test fleet)
#   make bench        benchmarks (not part of make test)
#   make demo         the demo fleet, end to end (make demo-clean removes it)
#   make clean        remove test output and caches (keeps .venv); `make distclean` removes .venv too
#
# Adding a suite: define its target below (depend on $(VENV_STAMP), and on collection-link if it
# runs ansible against vmic.fleet), add it to .PHONY, and add it to TEST_TARGETS if CI must run it.
# Extra arguments reach the tools through PYTEST_ARGS, SANITY_ARGS, LINT_ARGS and INTEGRATION_ARGS
# (for example: make units PYTEST_ARGS='-k dn -x', make integration INTEGRATION_ARGS='rollout').

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test
.DELETE_ON_ERROR:

PYTHON ?= python3
ROOT := $(abspath $(dir $(lastword $(MAKEFILE_LIST))))
VENV ?= $(ROOT)/.venv
VENV_BIN := $(VENV)/bin
VENV_PYTHON := $(VENV_BIN)/python
REQUIREMENTS := $(ROOT)/tests/requirements.txt
CONSTRAINTS := $(ROOT)/tests/requirements-constraints.txt
# The working tree as the collection vmic.fleet for Ansible (a symlink, as in tests/conftest.py;
# only ansible-test needs a real copy, which tests/tools/ansible-test-sanity.sh makes).
COLLECTIONS_DIR := $(ROOT)/.tmp/collections
COLLECTION_LINK := $(COLLECTIONS_DIR)/ansible_collections/vmic/fleet
# Records which requirement files the venv was last brought up to date with.
VENV_STAMP := $(VENV)/.vmic-fleet-requirements.stamp

PYTEST_ARGS ?=
SANITY_ARGS ?=
LINT_ARGS ?=
INTEGRATION_ARGS ?=

TEST_TARGETS := units sanity lint tarball engines swarm integration fleet molecule

# The tools of the venv come first for every recipe and every script they start.
export PATH := $(VENV_BIN):$(PATH)
export VENV
# ansible, ansible-playbook and ansible-lint started from make resolve vmic.fleet.* to the working tree.
export ANSIBLE_COLLECTIONS_PATH := $(COLLECTIONS_DIR)
# Nothing is fetched at test time: the test machines reach only the package registries.
export ANSIBLE_LINT_SKIP_SCHEMA_UPDATE := 1
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: test venv collection-link units engines swarm sanity lint tarball integration fleet molecule bench scale demo demo-clean clean distclean

test: $(TEST_TARGETS)
	@echo "make test: all of $(TEST_TARGETS) passed"

venv: $(VENV_STAMP)

# Adds to an existing venv, never recreates it; re-runs when a requirement file changes.
$(VENV_STAMP): $(REQUIREMENTS) $(CONSTRAINTS)
	@if [[ ! -x "$(VENV_PYTHON)" ]]; then \
	    echo "Creating $(VENV) with $$(command -v $(PYTHON)) ($$($(PYTHON) -V 2>&1))"; \
	    $(PYTHON) -m venv "$(VENV)"; \
	fi
	"$(VENV_PYTHON)" -m pip install --quiet --requirement "$(REQUIREMENTS)" --constraint "$(CONSTRAINTS)"
	"$(VENV_PYTHON)" -m pip check
	@touch "$@"

collection-link:
	@mkdir -p "$(dir $(COLLECTION_LINK))"
	@if [[ ! -e "$(COLLECTION_LINK)" ]]; then ln -sfn "$(ROOT)" "$(COLLECTION_LINK)"; fi

units: $(VENV_STAMP)
	cd "$(ROOT)" && "$(VENV_BIN)/pytest" tests/unit $(PYTEST_ARGS)

# The engine service, rtorrent and opentracker as real processes on 127.0.0.x (root for the rtorrent
# user test); VMIC_ENGINE_PYTHON=/usr/bin/python3 runs the engines on Debian's python3-libtorrent.
engines: $(VENV_STAMP) collection-link
	cd "$(ROOT)" && "$(VENV_BIN)/pytest" tests/engines $(PYTEST_ARGS)

swarm: $(VENV_STAMP) collection-link
	cd "$(ROOT)" && "$(VENV_BIN)/pytest" tests/swarm $(PYTEST_ARGS)

sanity: $(VENV_STAMP)
	"$(ROOT)/tests/tools/ansible-test-sanity.sh" $(SANITY_ARGS)

lint: $(VENV_STAMP) collection-link
	cd "$(ROOT)" && "$(VENV_BIN)/ansible-lint" $(LINT_ARGS)

# The collection as users get it: changelog lint, ansible-galaxy collection build, install into an
# empty collections path, ansible-doc on every module and role (tests/tools/tarball-check.sh).
tarball: $(VENV_STAMP)
	"$(ROOT)/tests/tools/tarball-check.sh"

integration: $(VENV_STAMP) collection-link
	"$(ROOT)/tests/integration/run.sh" $(INTEGRATION_ARGS)

# The test fleet itself: systemd-nspawn hosts with real systemd and sshd, reached over SSH (root).
fleet: $(VENV_STAMP) collection-link
	cd "$(ROOT)" && "$(VENV_BIN)/pytest" tests/fleet -m fleet $(PYTEST_ARGS)

# Molecule scenarios under extensions/molecule/, on the test fleet (no container engine).
molecule: $(VENV_STAMP) collection-link
	cd "$(ROOT)/extensions" && "$(VENV_BIN)/molecule" test --all

# The built-in demo fleet: the main job end to end (demo/demo.sh says what it does).
demo:
	bash "$(ROOT)/demo/demo.sh"

demo-clean:
	bash "$(ROOT)/demo/clean.sh"

# Benchmarks: figures, not pass/fail. BENCH_ARGS reach bench/bench_swarm.py (e.g. --nodes 40).
# The control plane at scale (root; not part of make test): HOSTS light hypervisors over real SSH, ping,
# status.yml and a no-op rollout.yml timed; the last line is the scale: line (docs/scale.md). SCALE_ARGS
# reach tests/scale/scale.py (e.g. --forks 100 --batch 50).
# tests/scale/requirements.txt (matplotlib, mitogen) goes into .venv for this target only.
HOSTS ?= 450
SCALE_ARGS ?=
SCALE_REQUIREMENTS := $(ROOT)/tests/scale/requirements.txt
SCALE_STAMP := $(VENV)/.vmic-fleet-scale-requirements.stamp
$(SCALE_STAMP): $(VENV_STAMP) $(SCALE_REQUIREMENTS)
	"$(VENV_PYTHON)" -m pip install --quiet --requirement "$(SCALE_REQUIREMENTS)" --constraint "$(CONSTRAINTS)"
	"$(VENV_PYTHON)" -m pip check
	@touch "$@"
scale: $(SCALE_STAMP) collection-link
	bash "$(ROOT)/tests/tools/install-deps.sh"
	cd "$(ROOT)" && "$(VENV_PYTHON)" tests/scale/scale.py --hosts "$(HOSTS)" $(SCALE_ARGS)

BENCH_ARGS ?=
bench: $(VENV_STAMP) collection-link
	bash "$(ROOT)/tests/tools/install-deps.sh"
	cd "$(ROOT)" && "$(VENV_PYTHON)" bench/bench_swarm.py $(BENCH_ARGS)

clean:
	rm -rf "$(ROOT)/.tmp" "$(ROOT)/tests/output" "$(ROOT)/.pytest_cache"
	find "$(ROOT)" -path "$(VENV)" -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf "$(VENV)"
