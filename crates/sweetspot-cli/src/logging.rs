//! Where logs go: stderr (below the progress bars) and, during `sweetspot run`, the run
//! folder's `run.log`.

use std::io::Write;
use std::sync::Mutex;

static RUN_LOG: Mutex<Option<std::fs::File>> = Mutex::new(None);

/// Sends the logs to `path` too (appended), from now on.
pub(crate) fn log_to(path: &std::path::Path) -> std::io::Result<()> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    *RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()) = Some(file);
    Ok(())
}

/// stderr, with the progress bars moved out of the way of each line.
pub(crate) struct Stderr;

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        sweetspot_runner::progress::suspend(|| std::io::stderr().write_all(buf))?;
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// `run.log`, when one is open; else nowhere.
pub(crate) struct RunLog;

impl Write for RunLog {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Some(f) = RUN_LOG.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            f.write_all(buf)?;
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
