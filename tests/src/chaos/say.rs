//! Progress output.

use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::writer::unix_ms;

/// Progress lines, to stdout and to `chaos.log` in the log directory.
pub(super) struct Say {
    started: Instant,
    file: Mutex<Option<std::fs::File>>,
}

impl Say {
    pub(super) fn new(dir: &Path) -> Say {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("chaos.log"))
            .ok();
        Say {
            started: Instant::now(),
            file: Mutex::new(file),
        }
    }

    pub(super) fn line(&self, text: impl AsRef<str>) {
        use std::io::Write;
        let ms = unix_ms();
        let line = format!(
            "[{:>7.1}s {:02}:{:02}:{:02}.{:03}Z] {}",
            self.started.elapsed().as_secs_f64(),
            ms / 3_600_000 % 24,
            ms / 60_000 % 60,
            ms / 1000 % 60,
            ms % 1000,
            text.as_ref()
        );
        println!("{line}");
        if let Some(f) = self.file.lock().unwrap().as_mut() {
            let _ = writeln!(f, "{line}");
        }
    }
}
