#!/usr/bin/env bash
# Installs every external component successover and its tests need:
# MariaDB 10.11 and HAProxy 2.6 from Debian's packages, iproute2 for the
# namespace "hosts", and Consul built from its Go module (cached).
# Idempotent: a second run only checks what is already there.
#
# Benchmark extras, only when asked (CI's setup does not pay for them):
#   SUCCESSOVER_SETUP_BENCH=1 scripts/setup.sh    (or: scripts/setup.sh --bench)
# also builds consul-template (pinned, v0.41.1) from its Go
# module into the same cache, for successover-bench-compare
# (docs/benchmarks.md). About 45 s the first time, well under a second after.
set -euo pipefail

CONSUL_VERSION="${CONSUL_VERSION:-v1.20.1}"
CACHE_DIR="${SUCCESSOVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/successover}"
BIN_DIR="$CACHE_DIR/bin"
CONSUL_BIN="$BIN_DIR/consul-${CONSUL_VERSION}"

log() { printf '[setup] %s\n' "$*" >&2; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; else sudo "$@"; fi
}

need_pkgs=()
command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ] || need_pkgs+=(mariadb-server)
command -v mariadb >/dev/null 2>&1 || need_pkgs+=(mariadb-client)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need_pkgs+=(haproxy)
command -v ip >/dev/null 2>&1 || [ -x /usr/sbin/ip ] || need_pkgs+=(iproute2)
command -v socat >/dev/null 2>&1 || need_pkgs+=(socat)
command -v go >/dev/null 2>&1 || need_pkgs+=(golang-go)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
    log "installing Debian packages: ${need_pkgs[*]}"
    as_root apt-get update -qq
    # The packaged mariadb/haproxy services are not used: tests and the
    # sandbox start their own instances on their own ports.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
        -o Dpkg::Options::=--force-confold "${need_pkgs[@]}" >/dev/null
    for svc in mariadb haproxy; do
        as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
    done
fi

mkdir -p "$BIN_DIR"
if [ ! -x "$CONSUL_BIN" ]; then
    command -v go >/dev/null 2>&1 || die "go is required to build Consul (apt-get install golang-go)"
    log "building Consul ${CONSUL_VERSION} from its Go module (first run only, a few minutes)"
    work="$CACHE_DIR/consul-build-${CONSUL_VERSION}"
    rm -rf "$work"
    mkdir -p "$work"
    # Consul's root go.mod carries replace directives for its own submodules,
    # which `go install module@version` refuses; a wrapper module that
    # requires Consul resolves the submodules from the proxy instead. The
    # exclude lines mirror upstream's so resolution picks the same versions.
    cat >"$work/go.mod" <<GOMOD
module successover.local/consulbuild

go 1.22

require github.com/hashicorp/consul ${CONSUL_VERSION}

exclude (
	github.com/hashicorp/go-msgpack v1.1.5
	github.com/hashicorp/go-msgpack v1.1.6
)
GOMOD
    cat >"$work/tools.go" <<'GOSRC'
//go:build tools

package tools

import _ "github.com/hashicorp/consul"
GOSRC
    (
        cd "$work"
        export GOFLAGS="-mod=mod -buildvcs=false"
        # Only the module proxy is reachable; never fall back to VCS.
        export GOPROXY="${GOPROXY_OVERRIDE:-https://proxy.golang.org}"
        go mod tidy -e >/dev/null 2>"$work/tidy.log" || true
        go get "github.com/hashicorp/consul@${CONSUL_VERSION}" 2>>"$work/tidy.log"
        go build -trimpath -ldflags "-s -w" -o "$CONSUL_BIN.tmp" github.com/hashicorp/consul
    ) || die "building Consul ${CONSUL_VERSION} failed; see $work/tidy.log"
    mv "$CONSUL_BIN.tmp" "$CONSUL_BIN"
    rm -rf "$work"
fi
ln -sf "$CONSUL_BIN" "$BIN_DIR/consul"

# --- benchmark extras (SUCCESSOVER_SETUP_BENCH=1 or --bench) ----------------
# consul-template, the setup successover-render replaces, for
# successover-bench-compare. Its root go.mod has no replace directives, so
# `go install module@version` builds it straight from the module proxy.
setup_bench="${SUCCESSOVER_SETUP_BENCH:-0}"
for arg in "$@"; do
    [ "$arg" = "--bench" ] && setup_bench=1
done
if [ "$setup_bench" = "1" ]; then
    CONSUL_TEMPLATE_VERSION="${CONSUL_TEMPLATE_VERSION:-v0.41.1}"
    CONSUL_TEMPLATE_BIN="$BIN_DIR/consul-template-${CONSUL_TEMPLATE_VERSION}"
    if [ ! -x "$CONSUL_TEMPLATE_BIN" ]; then
        command -v go >/dev/null 2>&1 || die "go is required to build consul-template (apt-get install golang-go)"
        log "building consul-template ${CONSUL_TEMPLATE_VERSION} from its Go module (first run only, about a minute)"
        ct_work="$CACHE_DIR/consul-template-build-${CONSUL_TEMPLATE_VERSION}"
        rm -rf "$ct_work"
        mkdir -p "$ct_work/bin"
        (
            cd "$ct_work"
            export GOFLAGS="-mod=mod -buildvcs=false"
            # Only the module proxy is reachable; never fall back to VCS.
            export GOPROXY="${GOPROXY_OVERRIDE:-https://proxy.golang.org}"
            GOBIN="$ct_work/bin" go install -trimpath -ldflags "-s -w" \
                "github.com/hashicorp/consul-template@${CONSUL_TEMPLATE_VERSION}" 2>"$ct_work/build.log"
        ) || die "building consul-template ${CONSUL_TEMPLATE_VERSION} failed; see $ct_work/build.log"
        mv "$ct_work/bin/consul-template" "$CONSUL_TEMPLATE_BIN"
        rm -rf "$ct_work"
    fi
    ln -sf "$CONSUL_TEMPLATE_BIN" "$BIN_DIR/consul-template"
    log "consul-template $BIN_DIR/consul-template -> $CONSUL_TEMPLATE_BIN ($("$CONSUL_TEMPLATE_BIN" -version 2>&1 | head -1))"
fi
# --- end of benchmark extras --------------------------------------------------

mariadbd_path=$(command -v mariadbd || echo /usr/sbin/mariadbd)
haproxy_path=$(command -v haproxy || echo /usr/sbin/haproxy)
cat >&2 <<INFO
[setup] components:
  consul    $BIN_DIR/consul -> $CONSUL_BIN ($("$CONSUL_BIN" version | head -1))
  mariadbd  $mariadbd_path ($("$mariadbd_path" --version | sed 's/^.*Ver //'))
  haproxy   $haproxy_path ($("$haproxy_path" -v | head -1))
  ip        $(command -v ip || echo /usr/sbin/ip)
INFO
# Machine-readable line for scripts that source the result.
echo "SUCCESSOVER_CONSUL=$BIN_DIR/consul"

# ---------------------------------------------------------------------------
# Ansible check (scripts/ansible-check.sh, run by scripts/test.sh):
# ansible-core and ansible-lint from PyPI, every package pinned in
# ansible/requirements.txt, in a venv under the cache directory. A stamp
# with the requirements' hash makes a second run a no-op; editing the file
# reinstalls. Also curl and systemd-analyze, which the check uses.
ANSIBLE_VENV="$CACHE_DIR/venv"
ANSIBLE_REQUIREMENTS="$(cd "$(dirname "$0")/.." && pwd)/ansible/requirements.txt"
ansible_pkgs=()
command -v curl >/dev/null 2>&1 || ansible_pkgs+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || ansible_pkgs+=(systemd)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || ansible_pkgs+=(python3-venv)
if [ "${#ansible_pkgs[@]}" -gt 0 ]; then
    log "installing Debian packages: ${ansible_pkgs[*]}"
    as_root apt-get update -qq
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${ansible_pkgs[@]}" >/dev/null
fi
ansible_want=$(sha256sum "$ANSIBLE_REQUIREMENTS" | cut -d' ' -f1)
if [ ! -x "$ANSIBLE_VENV/bin/ansible-lint" ] ||
    [ "$(cat "$ANSIBLE_VENV/.requirements.sha256" 2>/dev/null)" != "$ansible_want" ]; then
    log "installing ansible-core and ansible-lint into $ANSIBLE_VENV (pinned in ansible/requirements.txt)"
    python3 -m venv "$ANSIBLE_VENV" || die "python3 -m venv failed"
    "$ANSIBLE_VENV/bin/pip" install --quiet --disable-pip-version-check \
        -r "$ANSIBLE_REQUIREMENTS" || die "pip install -r ansible/requirements.txt failed"
    echo "$ansible_want" >"$ANSIBLE_VENV/.requirements.sha256"
fi
log "ansible   $ANSIBLE_VENV/bin ($("$ANSIBLE_VENV/bin/ansible-playbook" --version | head -1))"
