#!/usr/bin/env bash
# Runs Hutch's whole test suite: installs every tool the tests use, builds
# the static agent, then runs the workspace's tests (unit, integration with
# real runc/overlayfs, and the wire-compatibility tests).
#
#   ./scripts/test.sh [cargo test args...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
install_runtime_deps
# Test fixtures: images from the host's busybox and from mmdebstrap, converted
# and inspected with real OCI tools; a real registry (distribution) to pull
# from, with openssl signing the tokens of its bearer-auth mode; PostgreSQL for
# the store tests on the second backend (each test runs a private cluster);
# systemd-analyze to verify the units in deploy/.
apt_install busybox-static skopeo umoci strace docker-registry openssl postgresql dnsmasq-base systemd
# The official E2B SDKs: the tests install exact versions (Python venvs from
# PyPI; npm packages from tests/sdk/js/package-lock.json) into the test cache.
python3 -m venv --help >/dev/null 2>&1 || apt_install python3-venv
command -v npm >/dev/null 2>&1 || apt_install nodejs npm
install_rust
cd "$HUTCH_ROOT"
say "building the agent"
cargo build --locked -p hutch-envd --profile agent --target "$MUSL_TARGET"
export HUTCH_ENVD_BIN="$HUTCH_ROOT/target/$MUSL_TARGET/agent/hutch-envd"
say "checking formatting and lints"
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
say "running the tests"
cargo test --locked --workspace "$@"
