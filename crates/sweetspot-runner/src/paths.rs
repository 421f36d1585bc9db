//! No output may overwrite an input: checked on absolute, symlink-resolved paths before a stage
//! (or a whole recipe) runs.

use std::path::{Component, Path, PathBuf};

use crate::error::RunError;

/// `path` made absolute with symlinks resolved as far as it exists (an output usually does not
/// exist yet: its deepest existing ancestor is resolved and the rest appended).
pub fn resolved(path: &Path) -> PathBuf {
    let abs = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut existing = abs.as_path();
    let mut rest = Vec::new();
    loop {
        if let Ok(c) = existing.canonicalize() {
            let mut out = c;
            for part in rest.iter().rev() {
                out.push(part);
            }
            return normalize(&out);
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => return normalize(&abs),
        }
    }
}

fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// Refuses any output that equals or contains an input, and any two outputs that are the same
/// path or one inside the other.
pub fn check_outputs(inputs: &[PathBuf], outputs: &[PathBuf]) -> Result<(), RunError> {
    let ins: Vec<(PathBuf, &PathBuf)> = inputs.iter().map(|p| (resolved(p), p)).collect();
    let outs: Vec<(PathBuf, &PathBuf)> = outputs.iter().map(|p| (resolved(p), p)).collect();
    for (o, shown) in &outs {
        for (i, input) in &ins {
            if i == o {
                return Err(RunError::Config(format!(
                    "the output {} is an input of the same run ({}); it would be overwritten: \
                     choose another output",
                    shown.display(),
                    input.display()
                )));
            }
            if Path::new(input).is_dir() && o.starts_with(i) {
                return Err(RunError::Config(format!(
                    "the output {} is inside an input folder of the same run ({}); choose an \
                     output outside it",
                    shown.display(),
                    input.display()
                )));
            }
            if i.starts_with(o) {
                return Err(RunError::Config(format!(
                    "the output {} contains an input of the same run ({}); choose an output \
                     outside it",
                    shown.display(),
                    input.display()
                )));
            }
        }
    }
    for (a, (x, xs)) in outs.iter().enumerate() {
        for (y, ys) in outs.iter().skip(a + 1) {
            if x == y || x.starts_with(y) || y.starts_with(x) {
                return Err(RunError::Config(format!(
                    "two outputs of the same run overlap: {} and {}",
                    xs.display(),
                    ys.display()
                )));
            }
        }
    }
    Ok(())
}

/// Whether a stage's `given` input is the stage before's product in a chained run: left out, or
/// naming that stage's own `output` (the explicit chain). Paths resolve against `ctx`'s folder.
pub fn reads_upstream(
    ctx: &sweetspot_core::BuildContext,
    given: Option<&PathBuf>,
    upstream_output: Option<&PathBuf>,
) -> bool {
    match given {
        None => true,
        Some(g) => {
            upstream_output.is_some_and(|o| resolved(&ctx.resolve(g)) == resolved(&ctx.resolve(o)))
        }
    }
}

/// `path` relative to the folder `base` when both are absolute and share a root (`..` where it
/// leaves `base`); `path` itself otherwise.
pub fn relative_to(path: &Path, base: &Path) -> PathBuf {
    if !(path.is_absolute() && base.is_absolute()) {
        return path.to_path_buf();
    }
    let (p, b) = (normalize(path), normalize(base));
    let (pc, bc): (Vec<Component<'_>>, Vec<Component<'_>>) =
        (p.components().collect(), b.components().collect());
    let common = pc.iter().zip(&bc).take_while(|(x, y)| x == y).count();
    if common == 0 {
        return path.to_path_buf();
    }
    let mut out = PathBuf::new();
    for _ in common..bc.len() {
        out.push("..");
    }
    for c in &pc[common..] {
        out.push(c.as_os_str());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_and_containing_outputs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("scored.jsonl");
        std::fs::write(&input, "x").unwrap();
        let same = dir.path().join("sub/../scored.jsonl");
        assert!(check_outputs(std::slice::from_ref(&input), &[same]).is_err());
        assert!(check_outputs(std::slice::from_ref(&input), &[dir.path().to_path_buf()]).is_err());
        let fine = dir.path().join("out");
        assert!(check_outputs(std::slice::from_ref(&input), std::slice::from_ref(&fine)).is_ok());
        assert!(check_outputs(&[], &[fine.clone(), fine.join("x")]).is_err());
    }

    #[test]
    fn relative_paths() {
        let r = |p: &str, b: &str| super::relative_to(Path::new(p), Path::new(b));
        assert_eq!(r("/a/b/c.txt", "/a"), Path::new("b/c.txt"));
        assert_eq!(r("/a/x/y", "/a/b/c"), Path::new("../../x/y"));
        assert_eq!(r("rel/p", "/a"), Path::new("rel/p"));
    }
}
