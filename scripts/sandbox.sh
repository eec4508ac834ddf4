#!/usr/bin/env bash
# Sets everything up, then runs the local sandbox and demo: Consul, three
# MariaDB servers (source + two replicas with GTID and lossless semi-sync),
# HAProxy driven by successover-render, a successover-agent per database and
# a writer going through HAProxy. It performs a planned successover and an
# automatic failover and prints each write-unavailability window and the
# count of lost acknowledged writes. `--hold` keeps it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
export SUCCESSOVER_CONSUL="${SUCCESSOVER_CONSUL:-${XDG_CACHE_HOME:-$HOME/.cache}/successover/bin/consul}"
cargo build --quiet --workspace --bins
exec target/debug/successover-sandbox "$@"
