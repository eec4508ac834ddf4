#!/usr/bin/env bash
# Sets everything up, then runs the local sandbox: Consul, three MariaDB
# servers (source + two replicas with GTID and lossless semi-sync), HAProxy
# and a writer going through it. `--hold` keeps it running until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo run --quiet -p successover-tests --bin successover-sandbox -- "$@"
