#!/usr/bin/env bash
# Installs every external component successover and its tests need:
# MariaDB 10.11 and HAProxy 2.6 from Debian's packages, iproute2 for the
# namespace "hosts", and Consul built from its Go module (cached).
# Idempotent: a second run only checks what is already there.
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
