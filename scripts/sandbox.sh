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
# The release build, as users run it (the harness starts the daemons from
# target/release with SUCCESSOVER_PROFILE=release).
cargo build --quiet --release --workspace --bins
export SUCCESSOVER_PROFILE=release
exec target/release/successover-sandbox "$@"
