//! Atomic file writes, shared by every crate that writes outputs: a file is written to a
//! temporary file beside its target and renamed into place, so it appears whole or not at all.
//!
//! Invariants:
//! - Temporary files are named `.sweetspot-<pid>-<random>.tmp` ([`TEMP_PREFIX`],
//!   [`TEMP_SUFFIX`]) and live in their target's folder (a rename never crosses file systems);
//!   sweetspot-io's `remove_stale_temp_files` removes those of a killed process by that name.
//! - They are created with the mode other outputs get (0644 before the umask), so a renamed
//!   output is not private, and synced to disk before the rename.
//! - Every error is a [`FileError`] naming the target, never the temporary file.

use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// How every temporary file's name begins (then the process id, a dash and random letters).
pub const TEMP_PREFIX: &str = ".sweetspot-";
/// How every temporary file's name ends.
pub const TEMP_SUFFIX: &str = ".tmp";

/// A file that cannot be created, written or renamed into place.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct FileError {
    /// The file (the target, not its temporary file).
    pub path: PathBuf,
    /// The operating system's error.
    #[source]
    pub source: std::io::Error,
}

impl FileError {
    fn at(path: &Path) -> impl Fn(std::io::Error) -> Self + '_ {
        move |source| Self {
            path: path.to_path_buf(),
            source,
        }
    }
}

/// A new, empty temporary file beside `target`, to be renamed onto it (`persist`) once written.
pub fn temp_file_for(target: &Path) -> Result<NamedTempFile, FileError> {
    let dir = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    temp_builder()
        .tempfile_in(dir)
        .map_err(FileError::at(target))
}

/// A temporary file beside `target` holding `contents`, synced, not yet renamed.
pub fn write_temp(target: &Path, contents: &[u8]) -> Result<NamedTempFile, FileError> {
    let mut tmp = temp_file_for(target)?;
    let io = FileError::at(target);
    tmp.write_all(contents).map_err(&io)?;
    tmp.as_file().sync_all().map_err(&io)?;
    Ok(tmp)
}

/// Writes `contents` to `target` atomically (temporary file beside it, then rename).
pub fn write_atomic(target: &Path, contents: &[u8]) -> Result<(), FileError> {
    let tmp = write_temp(target, contents)?;
    tmp.persist(target)
        .map_err(|e| FileError::at(target)(e.error))?;
    Ok(())
}

/// `.sweetspot-<pid>-<random>.tmp`, mode 0644 before the umask.
fn temp_builder() -> tempfile::Builder<'static, 'static> {
    let mut b = tempfile::Builder::new();
    b.prefix(temp_prefix()).suffix(TEMP_SUFFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        b.permissions(std::fs::Permissions::from_mode(0o644));
    }
    b
}

fn temp_prefix() -> &'static str {
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PREFIX.get_or_init(|| format!("{TEMP_PREFIX}{}-", std::process::id()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_whole_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("out.json");
        write_atomic(&target, b"one").unwrap();
        write_atomic(&target, b"two").unwrap();
        assert_eq!(std::fs::read(&target).unwrap(), b"two");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.json"]);
    }

    #[test]
    fn errors_name_the_target() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("missing").join("out.json");
        let err = write_atomic(&target, b"x").unwrap_err();
        assert_eq!(err.path, target);
        assert!(err.to_string().starts_with(&target.display().to_string()));
    }
}
