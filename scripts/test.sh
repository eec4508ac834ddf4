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
# per binary keep the services responsive. This run's servers are MariaDB
# 10.11 (or $SUCCESSOVER_FLAVOUR).
status=0
cargo test --workspace --no-fail-fast -- --test-threads="${SUCCESSOVER_TEST_THREADS:-4}" "$@" || status=$?
# The agent, switchover, failover and rejoin tests and the short chaos run
# again on the other flavours scripts/setup.sh unpacks (a missing one fails,
# naming setup.sh). Set SUCCESSOVER_OTHER_FLAVOURS="" to skip them, e.g.
# while iterating.
for flavour in ${SUCCESSOVER_OTHER_FLAVOURS-mysql-9.7 mariadb-11.4}; do
    started=$(date +%s)
    SUCCESSOVER_FLAVOUR="$flavour" cargo test -p successover-tests --no-fail-fast \
        --test agent --test switchover --test failover --test rejoin --test chaos \
        -- --test-threads="${SUCCESSOVER_TEST_THREADS:-4}" "$@" || status=$?
    echo "[test] $flavour: agent, switchover, failover, rejoin and chaos tests took $(($(date +%s) - started))s" >&2
done
exit "$status"
