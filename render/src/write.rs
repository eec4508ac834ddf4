//! Atomic replacement of the live config, after consul-template's
//! renderer: skip when unchanged; temp file in the destination directory
//! (rename is only atomic within one filesystem), fsync, keep the old
//! file's permissions, rename, fsync the directory.

use std::fs::{self, File, Permissions};
use std::io::{self, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Mode of a file created where none existed: HAProxy runs as its own user.
const DEFAULT_MODE: u32 = 0o644;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}")]
pub struct WriteError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

/// The current contents of `path`, `None` when it does not exist.
pub fn read_current(path: &Path) -> io::Result<Option<Vec<u8>>> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn write_atomic(path: &Path, contents: &[u8]) -> Result<WriteOutcome, WriteError> {
    let err = |source| WriteError {
        path: path.to_owned(),
        source,
    };
    if read_current(path).map_err(err)?.as_deref() == Some(contents) {
        return Ok(WriteOutcome::Unchanged);
    }
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let existing = match fs::metadata(path) {
        Ok(m) => Some(m),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(err(e)),
    };

    let mut temp = tempfile::Builder::new()
        .prefix(&format!(".{name}."))
        .suffix(".tmp")
        .tempfile_in(dir)
        .map_err(err)?;
    temp.write_all(contents).map_err(err)?;
    let mode = existing
        .as_ref()
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(DEFAULT_MODE);
    temp.as_file()
        .set_permissions(Permissions::from_mode(mode))
        .map_err(err)?;
    if let Some(m) = &existing {
        // Keeping the owner needs privileges the renderer may not have; the
        // mode is what HAProxy's access depends on in practice.
        if let Err(e) = std::os::unix::fs::fchown(temp.as_file(), Some(m.uid()), Some(m.gid())) {
            if e.kind() != io::ErrorKind::PermissionDenied {
                return Err(err(e));
            }
        }
    }
    temp.as_file().sync_all().map_err(err)?;
    temp.persist(path).map_err(|e| err(e.error))?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    Ok(WriteOutcome::Written)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn creates_then_skips_when_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        assert_eq!(write_atomic(&path, b"a\n").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&path).unwrap(), b"a\n");
        assert_eq!(
            fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            DEFAULT_MODE
        );
        let before = fs::metadata(&path).unwrap();
        assert_eq!(
            write_atomic(&path, b"a\n").unwrap(),
            WriteOutcome::Unchanged
        );
        let after = fs::metadata(&path).unwrap();
        assert_eq!(before.ino(), after.ino(), "unchanged file was replaced");
        assert_eq!(entries(dir.path()), ["haproxy.cfg"]);
    }

    #[test]
    fn replaces_atomically_and_keeps_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("haproxy.cfg");
        fs::write(&path, b"old\n").unwrap();
        fs::set_permissions(&path, Permissions::from_mode(0o640)).unwrap();
        let old_ino = fs::metadata(&path).unwrap().ino();

        assert_eq!(
            write_atomic(&path, b"new\n").unwrap(),
            WriteOutcome::Written
        );
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"new\n");
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_ne!(meta.ino(), old_ino, "written in place, not renamed");
        // No temp file left behind in the directory.
        assert_eq!(entries(dir.path()), ["haproxy.cfg"]);
    }

    #[test]
    fn failure_leaves_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing-dir").join("haproxy.cfg");
        let err = write_atomic(&path, b"x").unwrap_err();
        assert!(err.to_string().contains("missing-dir"), "{err}");
    }
}
