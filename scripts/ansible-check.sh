#!/usr/bin/env bash
# Checks ansible/ the way an operator would use it, on this machine:
#   1. ansible-playbook --syntax-check of every playbook;
#   2. ansible-lint, production profile (ansible/.ansible-lint);
#   3. a real apply of the roles (ansible/tests/apply.yml): every file into a
#      throwaway root, the MySQL accounts into a throwaway MariaDB, the
#      cluster settings into a throwaway Consul (systemd is not touched);
#   4. the staged files, modes and contents (ansible/tests/verify.yml), the
#      agent's privileges used for real, the KV values, the units through
#      `systemd-analyze verify` and the daemons' own --check-config;
#   5. a second apply, whose recap must show changed=0.
# Needs what scripts/setup.sh installs (ansible venv, Consul, MariaDB).
# SUCCESSOVER_ANSIBLE_CHECK_KEEP=1 keeps the throwaway directory (logs,
# staged root) for a look afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
start=$(date +%s)

CACHE_DIR="${SUCCESSOVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/successover}"
VENV="$CACHE_DIR/venv"
CONSUL="${SUCCESSOVER_CONSUL:-$CACHE_DIR/bin/consul}"

log() { printf '[ansible-check] %3ss %s\n' "$(($(date +%s) - start))" "$*" >&2; }
die() { printf '[ansible-check] error: %s\n' "$*" >&2; exit 1; }

[ -x "$VENV/bin/ansible-playbook" ] && [ -x "$VENV/bin/ansible-lint" ] ||
    die "ansible-core/ansible-lint not found in $VENV; run scripts/setup.sh"
[ -x "$CONSUL" ] || die "Consul not found at $CONSUL; run scripts/setup.sh"
for tool in mariadbd mariadb mariadb-install-db systemd-analyze curl; do
    command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
        die "$tool not found; run scripts/setup.sh (Debian packages mariadb-server, systemd, curl)"
done
mariadbd_bin=$(command -v mariadbd || echo /usr/sbin/mariadbd)
export PATH="$VENV/bin:$PATH"

work=$(mktemp -d "${TMPDIR:-/tmp}/successover-ansible.XXXXXX")
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${pids[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "${SUCCESSOVER_ANSIBLE_CHECK_KEEP:-0}" = 1 ]; then
        log "kept $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# Ansible's own state stays in the throwaway directory too.
export ANSIBLE_LOCAL_TEMP="$work/ansible-tmp" ANSIBLE_REMOTE_TEMP="$work/ansible-tmp"
export ANSIBLE_HOME="$work/ansible-home"
export ANSIBLE_CONFIG="$repo/ansible/ansible.cfg"
export ANSIBLE_NOCOLOR=1 ANSIBLE_FORCE_COLOR=0 PY_COLORS=0
# Modules run through a pipe instead of temp files: faster, same result.
export ANSIBLE_PIPELINING=1

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

cd "$repo/ansible"

log "syntax check"
ansible-playbook --syntax-check -i inventory/example/hosts.yml site.yml >/dev/null
for pb in tests/apply.yml tests/verify.yml; do
    ansible-playbook --syntax-check -i tests/inventory.yml "$pb" >/dev/null
done

log "ansible-lint (profile production)"
ansible-lint --nocolor -q site.yml roles tests ||
    die "ansible-lint found problems (above)"

# The daemons' binaries, for the roles to install and for --check-config
# (scripts/test.sh has built them already; then this is a no-op).
log "building the daemons"
target_dir="${CARGO_TARGET_DIR:-$repo/target}"
(cd "$repo" && cargo build --quiet -p successover-agent -p successover-render --bins)
# Copies: a build running meanwhile must not make the second apply differ.
bin_dir="$work/bin"
mkdir -p "$bin_dir"
cp "$target_dir/debug/successover-agent" "$target_dir/debug/successover-render" "$bin_dir/"

log "starting a throwaway Consul and MariaDB"
http_port=$(free_port)
# Only the HTTP API and the ports a dev server cannot do without; nothing
# talks to anything beyond this machine.
cat >"$work/consul.hcl" <<HCL
node_name = "ansible-check"
bind_addr = "127.0.0.1"
advertise_addr = "127.0.0.1"
client_addr = "127.0.0.1"
ports {
  http = $http_port
  https = -1
  grpc = -1
  grpc_tls = -1
  dns = -1
  serf_lan = $(free_port)
  serf_wan = $(free_port)
  server = $(free_port)
}
disable_update_check = true
disable_anonymous_signature = true
HCL
"$CONSUL" agent -dev -config-file="$work/consul.hcl" >"$work/consul.log" 2>&1 &
pids+=($!)
consul_addr="http://127.0.0.1:$http_port"

db="$work/mariadb"
mkdir -p "$db"
mariadb-install-db --no-defaults --datadir="$db/data" --skip-test-db --user=root \
    --innodb-buffer-pool-size=16M --innodb-log-file-size=8M >"$db/install.log" 2>&1 ||
    die "mariadb-install-db failed: $(tail -5 "$db/install.log")"
db_port=$(free_port)
"$mariadbd_bin" --no-defaults --datadir="$db/data" --socket="$db/mysqld.sock" \
    --pid-file="$db/mysqld.pid" --port="$db_port" --bind-address=127.0.0.1 --user=root \
    --log-bin=mysql-bin --server-id=11 --skip-name-resolve \
    --innodb-buffer-pool-size=16M --innodb-log-file-size=8M \
    >"$db/mysqld.log" 2>&1 &
pids+=($!)

for _ in $(seq 100); do
    leader=$(curl -fsS "$consul_addr/v1/status/leader" 2>/dev/null || true)
    if [ -n "$leader" ] && [ "$leader" != '""' ] &&
        mariadb --no-defaults --socket="$db/mysqld.sock" -uroot -e 'SELECT 1' >/dev/null 2>&1; then
        break
    fi
    sleep 0.1
done
[ -n "$leader" ] && [ "$leader" != '""' ] || die "Consul did not start: $(tail -5 "$work/consul.log")"
mariadb --no-defaults --socket="$db/mysqld.sock" -uroot -e 'SELECT 1' >/dev/null ||
    die "MariaDB did not start: $(tail -5 "$db/mysqld.log")"

root="$work/root"
mkdir -p "$root"
vars=(-e "check_root=$root" -e "check_binary_dir=$bin_dir"
    -e "check_consul_addr=$consul_addr" -e "check_mysql_socket=$db/mysqld.sock")

apply() {
    ansible-playbook -i tests/inventory.yml tests/apply.yml "${vars[@]}" >"$work/$1.log" 2>&1 ||
        { cat "$work/$1.log" >&2; die "apply ($1) failed"; }
}

log "first apply"
apply first
ansible-playbook -i tests/inventory.yml tests/verify.yml -e "check_root=$root" >"$work/verify.log" 2>&1 ||
    { cat "$work/verify.log" >&2; die "the staged files are not as expected"; }

log "using the agent's grants for real"
agent_sql() {
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$db_port" -usuccessover \
        -p"check-agent-secret" --batch --skip-column-names -e "$1"
}
# Every statement kind the agent runs (agent/src/mysql): fencing, semi-sync
# flags, replication control and status, the heartbeat row.
for stmt in \
    "SET GLOBAL read_only = ON" "SET GLOBAL read_only = OFF" \
    "SET GLOBAL rpl_semi_sync_master_enabled = ON" "SET GLOBAL rpl_semi_sync_master_enabled = OFF" \
    "SET GLOBAL rpl_semi_sync_slave_enabled = ON" "SET GLOBAL rpl_semi_sync_slave_enabled = OFF" \
    "SHOW GLOBAL VARIABLES LIKE 'rpl_semi_sync_%'" "SHOW GLOBAL STATUS LIKE 'Rpl_semi_sync_%'" \
    "SHOW SLAVE STATUS" "SHOW MASTER STATUS" "SHOW FULL PROCESSLIST" \
    "SELECT @@global.gtid_current_pos, @@global.gtid_binlog_pos, @@global.gtid_slave_pos" \
    "STOP SLAVE" \
    "CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=1, MASTER_USER='repl', MASTER_PASSWORD='x', MASTER_USE_GTID=slave_pos, MASTER_HEARTBEAT_PERIOD=1.000, MASTER_CONNECT_RETRY=1" \
    "RESET SLAVE ALL" "SET GLOBAL gtid_slave_pos = ''" \
    "SELECT MASTER_GTID_WAIT('', 0)" \
    "CREATE DATABASE IF NOT EXISTS successover" \
    "CREATE TABLE IF NOT EXISTS successover.heartbeat (id INT NOT NULL PRIMARY KEY, at DATETIME(6) NOT NULL) ENGINE=InnoDB" \
    "REPLACE INTO successover.heartbeat (id, at) VALUES (1, NOW(6))"; do
    out=$(agent_sql "$stmt" 2>&1) || die "the agent account cannot run: $stmt
$out"
done
# Fencing kills other accounts' client connections.
mariadb --no-defaults --socket="$db/mysqld.sock" -uroot -e 'SELECT SLEEP(60)' >/dev/null 2>&1 &
sleeper=$!
victim=""
for _ in $(seq 50); do
    victim=$(agent_sql "SELECT id FROM information_schema.processlist WHERE user = 'root' AND info LIKE 'SELECT SLEEP%'" 2>/dev/null || true)
    [ -n "$victim" ] && break
    sleep 0.1
done
[ -n "$victim" ] || die "the agent account cannot see other accounts' connections (PROCESS)"
agent_sql "KILL CONNECTION $victim" || die "the agent account cannot kill other accounts' connections"
wait "$sleeper" 2>/dev/null || true
# And nothing beyond what it needs.
for stmt in "CREATE USER 'x'@'%'" "SELECT * FROM mysql.user" "CREATE DATABASE other" \
    "SET GLOBAL general_log = OFF" "SHUTDOWN"; do
    if agent_sql "$stmt" >/dev/null 2>&1; then
        die "the agent account may run more than it needs: $stmt"
    fi
done
mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$db_port" -urepl -pcheck-repl-secret \
    -e 'SELECT 1' >/dev/null || die "the replication account cannot log in"
# The renderers' source check: reads read_only, and nothing else.
check_sql() {
    mariadb --no-defaults --protocol=TCP -h127.0.0.1 -P"$db_port" -uso_check \
        -pcheck-source-secret --batch --skip-column-names -e "$1"
}
[ "$(check_sql 'SELECT @@global.read_only')" = 0 ] || [ "$(check_sql 'SELECT @@global.read_only')" = 1 ] ||
    die "the source-check account cannot read read_only"
for stmt in "SET GLOBAL read_only = ON" "SELECT * FROM mysql.user" "CREATE DATABASE other"; do
    if check_sql "$stmt" >/dev/null 2>&1; then
        die "the source-check account may run more than it needs: $stmt"
    fi
done

log "checking the cluster settings in Consul KV"
kv_want() {
    printf '{"auto_failover": %s, "failover_cooldown_seconds": 3600, "maintenance": %s, "max_lag_seconds": %s, "proxy_port": %s, "semi_sync_replicas": %s}' "$@"
}
for want in "c1 $(kv_want true false 10 13306 1)" "c2 $(kv_want false false 30 13307 2)"; do
    name=${want%% *}
    got=$(curl -fsS "$consul_addr/v1/kv/mysql/cluster/$name?raw") || die "mysql/cluster/$name not in KV"
    [ "$got" = "${want#* }" ] || die "mysql/cluster/$name is $got, want ${want#* }"
done
# An operator puts c1 into maintenance by hand: the next apply must leave
# that alone (and so change nothing).
maintenance=$(kv_want true true 10 13306 1)
curl -fsS -X PUT --data "$maintenance" "$consul_addr/v1/kv/mysql/cluster/c1" >/dev/null

log "systemd-analyze verify on the staged units"
units="$work/units"
mkdir -p "$units"
# The staged units, their drop-ins pointing at the staged binaries; Debian's
# haproxy.service gets the role's drop-in the same way.
cp -r "$root/etc/systemd/system/." "$units/"
grep -rl '/usr/local/bin/' "$units" | xargs sed -i "s#/usr/local/bin/#$root/usr/local/bin/#g"
units_to_verify=(successover-agent.service successover-render.service)
if [ -f /lib/systemd/system/haproxy.service ] || [ -f /usr/lib/systemd/system/haproxy.service ]; then
    units_to_verify+=(haproxy.service)
fi
# The trailing colon keeps the default unit path behind the staged one.
SYSTEMD_UNIT_PATH="$units:" systemd-analyze verify "${units_to_verify[@]}" 2>"$work/verify-units.log" ||
    { cat "$work/verify-units.log" >&2; die "systemd-analyze verify failed"; }
if [ -s "$work/verify-units.log" ]; then
    cat "$work/verify-units.log" >&2
    die "systemd-analyze verify reported problems"
fi

log "the daemons' --check-config on the staged configs"
# The configs name real paths (/etc/successover/...); point them at the
# staged copies.
for f in agent.toml render.toml; do
    sed "s#/etc/successover/#$root/etc/successover/#g" "$root/etc/successover/$f" >"$work/$f"
done
"$root/usr/local/bin/successover-agent" --check-config --config "$work/agent.toml" >/dev/null ||
    die "successover-agent rejects the config the role wrote"
"$root/usr/local/bin/successover-render" --check-config --config "$work/render.toml" >/dev/null ||
    die "successover-render rejects the config the role wrote"

log "second apply (must change nothing)"
apply second
recap=$(sed -n '/PLAY RECAP/,$p' "$work/second.log")
if ! grep -q 'changed=0' <<<"$recap" || grep -Eq 'changed=[1-9]|failed=[1-9]' <<<"$recap"; then
    grep -E 'changed:|^TASK' "$work/second.log" | grep -B1 'changed:' >&2 || true
    echo "$recap" >&2
    die "the second apply changed something"
fi

got=$(curl -fsS "$consul_addr/v1/kv/mysql/cluster/c1?raw")
[ "$got" = "$maintenance" ] || die "the second apply overwrote an operator's maintenance switch: $got"

log "ok in $(($(date +%s) - start))s"
