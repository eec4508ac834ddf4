//! Finding the external programs the tests drive.
//!
//! A missing program panics with what to install: in CI a missing component
//! must fail the run, never turn into a silently skipped test.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

const SETUP_HINT: &str = "run scripts/setup.sh, which installs every component the tests need";

/// `consul`: `$SUCCESSOVER_CONSUL`, else the binary `scripts/setup.sh` builds
/// into its cache (`$SUCCESSOVER_CACHE` or `~/.cache/successover`, `bin/consul`),
/// else `PATH`.
pub fn consul() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let cached = cache_dir().join("bin/consul");
        find(
            "consul",
            "SUCCESSOVER_CONSUL",
            &[cached],
            "run scripts/setup.sh, which builds Consul into ~/.cache/successover/bin/consul",
        )
    })
}

/// `consul-template`, only for `successover-bench-compare`:
/// `$SUCCESSOVER_CONSUL_TEMPLATE`, else the binary `scripts/setup.sh` builds
/// into its cache when asked for the benchmark extras, else `PATH`.
pub fn consul_template() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        let cached = cache_dir().join("bin/consul-template");
        find(
            "consul-template",
            "SUCCESSOVER_CONSUL_TEMPLATE",
            &[cached],
            "run SUCCESSOVER_SETUP_BENCH=1 scripts/setup.sh, which builds consul-template \
             into ~/.cache/successover/bin/consul-template",
        )
    })
}

/// `mariadbd`, the MariaDB server.
pub fn mariadbd() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        find(
            "mariadbd",
            "SUCCESSOVER_MARIADBD",
            &[PathBuf::from("/usr/sbin/mariadbd")],
            "apt-get install mariadb-server (or run scripts/setup.sh)",
        )
    })
}

/// `mariadb-install-db`, which creates a fresh datadir.
pub fn mariadb_install_db() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        find(
            "mariadb-install-db",
            "SUCCESSOVER_MARIADB_INSTALL_DB",
            &[PathBuf::from("/usr/bin/mariadb-install-db")],
            "apt-get install mariadb-server (or run scripts/setup.sh)",
        )
    })
}

/// `haproxy`.
pub fn haproxy() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        find(
            "haproxy",
            "SUCCESSOVER_HAPROXY",
            &[PathBuf::from("/usr/sbin/haproxy")],
            "apt-get install haproxy (or run scripts/setup.sh)",
        )
    })
}

/// `ip` from iproute2, for the network-namespace hosts.
pub fn ip() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        find(
            "ip",
            "SUCCESSOVER_IP",
            &[PathBuf::from("/usr/sbin/ip"), PathBuf::from("/sbin/ip")],
            "apt-get install iproute2 (or run scripts/setup.sh)",
        )
    })
}

/// `socat`, a handy listener and client for network tests.
pub fn socat() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        find(
            "socat",
            "SUCCESSOVER_SOCAT",
            &[PathBuf::from("/usr/bin/socat")],
            "apt-get install socat (or run scripts/setup.sh)",
        )
    })
}

/// `successover-render`, the renderer daemon under test, as cargo built it
/// in this workspace: `$SUCCESSOVER_RENDER`, else next to the running test
/// or bench executable (`target/<profile>/` or its `deps/`), else
/// `target/debug/` under the workspace. Cargo builds a test binary's own
/// package's binaries only, so `scripts/test.sh` runs `cargo build
/// --workspace --bins` first; a missing or stale binary panics saying so,
/// because testing yesterday's renderer would prove nothing about today's.
pub fn successover_render() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        workspace_binary(
            "successover-render",
            "SUCCESSOVER_RENDER",
            &[
                "render/src",
                "render/Cargo.toml",
                "common/src",
                "common/Cargo.toml",
                "templates",
            ],
        )
    })
}

/// `successover`, the operator CLI (package `successover-ctl`), found and
/// checked for staleness like [`successover_render`]: `$SUCCESSOVER_CLI`,
/// else next to the running executable, else `target/debug/`.
pub fn successover() -> &'static Path {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| {
        workspace_binary(
            "successover",
            "SUCCESSOVER_CLI",
            &[
                "ctl/src",
                "ctl/Cargo.toml",
                "common/src",
                "common/Cargo.toml",
            ],
        )
    })
}

/// The package of this workspace that builds binary `name`, for build
/// hints: the binary and its package are not always named alike.
pub fn package_of(name: &str) -> Option<&'static str> {
    match name {
        "successover" => Some("successover-ctl"),
        "successover-agent" => Some("successover-agent"),
        "successover-render" => Some("successover-render"),
        n if n.starts_with("successover-") => Some("successover-tests"),
        _ => None,
    }
}

/// A binary built from this workspace, not older than any of `roots` (the
/// sources it is built from, relative to the workspace).
fn workspace_binary(name: &str, env_var: &str, roots: &[&str]) -> PathBuf {
    let package = package_of(name).expect("a binary of this workspace");
    let build = format!("run `cargo build -p {package}` (scripts/test.sh does)");
    if let Some(explicit) = std::env::var_os(env_var) {
        let path = PathBuf::from(explicit);
        assert!(
            is_executable(&path),
            "{env_var}={} is not an executable file; unset it or {build}",
            path.display()
        );
        return path;
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate lives in the workspace")
        .to_path_buf();
    let mut candidates = Vec::new();
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/deps/<test> or target/<profile>/<bin>.
        for dir in exe.ancestors().skip(1).take(2) {
            candidates.push(dir.join(name));
        }
    }
    candidates.push(workspace.join("target/debug").join(name));
    let Some(found) = candidates.iter().find(|p| is_executable(p)) else {
        panic!(
            "`{name}` was not found (looked at {}): {build}",
            candidates
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    };
    if let Some(newer) = newer_source(found, &workspace, roots) {
        panic!(
            "{} is older than {}: {build}",
            found.display(),
            newer.display()
        );
    }
    found.clone()
}

/// A file under `roots` (what a binary is built from, links or embeds)
/// modified after `binary` was built.
fn newer_source(binary: &Path, workspace: &Path, roots: &[&str]) -> Option<PathBuf> {
    let built = std::fs::metadata(binary).and_then(|m| m.modified()).ok()?;
    let mut stack: Vec<PathBuf> = roots.iter().map(|r| workspace.join(r)).collect();
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        } else if meta.modified().is_ok_and(|m| m > built) {
            return Some(path);
        }
    }
    None
}

/// The cache directory `scripts/setup.sh` uses; the harness keeps its
/// MariaDB datadir template there too.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SUCCESSOVER_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| std::env::temp_dir().join("successover-cache"));
    base.join("successover")
}

fn find(name: &str, env_var: &str, candidates: &[PathBuf], install: &str) -> PathBuf {
    if let Some(explicit) = std::env::var_os(env_var) {
        let path = PathBuf::from(explicit);
        assert!(
            is_executable(&path),
            "{env_var}={} is not an executable file; unset it or point it at `{name}`: {SETUP_HINT}",
            path.display()
        );
        return path;
    }
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    // Root's PATH has the sbin directories, other users' often does not.
    let sbin = ["/usr/local/sbin", "/usr/sbin", "/sbin"].map(|d| Path::new(d).join(name));
    candidates
        .iter()
        .cloned()
        .chain(on_path)
        .chain(sbin)
        .find(|p| is_executable(p))
        .unwrap_or_else(|| {
            panic!(
                "the successover tests need `{name}`, which was not found \
                 (looked at ${env_var}, {}, PATH and the sbin directories): {install}",
                candidates
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    // metadata() follows symlinks, so a dangling cache symlink counts as missing.
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}
