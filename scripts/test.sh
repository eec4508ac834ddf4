#!/usr/bin/env bash
# Runs every test: unit tests and the integration tests against real Consul,
# MariaDB and HAProxy (started by the tests themselves). Run
# scripts/setup.sh first on a new machine; a missing component fails the
# run with a message saying what to install.
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR="${SUCCESSOVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/successover}"
export SUCCESSOVER_CONSUL="${SUCCESSOVER_CONSUL:-$CACHE_DIR/bin/consul}"
if [ ! -x "$SUCCESSOVER_CONSUL" ]; then
    echo "error: Consul not found at $SUCCESSOVER_CONSUL; run scripts/setup.sh first" >&2
    exit 1
fi

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --quiet -- -D warnings
# The end-to-end tests run the daemons as separate processes, and cargo
# test only builds the binaries of a test's own package.
cargo build --workspace --bins --quiet
# Ansible roles: lint, a real apply into a throwaway root, idempotence.
bash scripts/ansible-check.sh
# Integration tests start real services; on two cores a few test threads
# per binary keep the services responsive.
cargo test --workspace --no-fail-fast -- --test-threads="${SUCCESSOVER_TEST_THREADS:-4}" "$@"
