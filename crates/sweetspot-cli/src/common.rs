//! What the commands share: reading and checking recipes, flag-made recipes, the context.

use std::path::{Path, PathBuf};

use sweetspot_core::BuildContext;
use sweetspot_core::recipe::Recipe;

use crate::Failure;

/// A recipe file read and parsed, with its text (for locating keys in later checks).
pub(crate) fn load_recipe(path: &Path) -> Result<(Recipe, String), Failure> {
    let text = std::fs::read_to_string(path).map_err(|e| Failure {
        message: format!("{}: cannot read the recipe: {e}", path.display()),
        code: 2,
    })?;
    let recipe = Recipe::from_toml(&text, Some(path))?;
    Ok((recipe, text))
}

/// Checks the stages of a recipe that are about to run (see `sweetspot_runner::validate`).
pub(crate) fn check_recipe(
    recipe: &Recipe,
    text: &str,
    origin: &Path,
    ctx: &BuildContext,
    stages: sweetspot_runner::Stages,
) -> Result<Vec<String>, Failure> {
    let src = sweetspot_runner::RecipeSource {
        recipe,
        text,
        origin,
    };
    sweetspot_runner::validate_recipe(&src, ctx, stages).map_err(|e| Failure {
        code: match e {
            sweetspot_runner::Invalid::MissingInput(_) => 1,
            sweetspot_runner::Invalid::Recipe(_) => 2,
        },
        message: e.error().to_string(),
    })
}

/// [`check_recipe`] for `run --plan`: missing inputs are returned (one line each), not refused.
pub(crate) fn check_recipe_for_plan(
    recipe: &Recipe,
    text: &str,
    origin: &Path,
    ctx: &BuildContext,
    stages: sweetspot_runner::Stages,
) -> Result<Vec<String>, Failure> {
    let src = sweetspot_runner::RecipeSource {
        recipe,
        text,
        origin,
    };
    sweetspot_runner::validate_for_plan(&src, ctx, stages)
        .map(|(_, missing)| missing)
        .map_err(|e| Failure {
            code: match e {
                sweetspot_runner::Invalid::MissingInput(_) => 1,
                sweetspot_runner::Invalid::Recipe(_) => 2,
            },
            message: e.error().to_string(),
        })
}

/// `--device`, set once at start.
pub(crate) static DEVICE_OVERRIDE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();

/// A recipe made from command-line flags, as tables, so that flags go through the same parser
/// and checks as a recipe file. Returns the recipe, its base folder and its origin for messages.
pub(crate) fn flag_recipe<const N: usize>(
    tables: [(&str, toml::Table); N],
) -> Result<(Recipe, PathBuf, PathBuf, String), Failure> {
    let root: toml::Table = tables
        .into_iter()
        .map(|(k, t)| (k.to_string(), toml::Value::Table(t)))
        .collect();
    let text = toml::to_string(&root).map_err(|e| Failure {
        message: e.to_string(),
        code: 2,
    })?;
    let origin = PathBuf::from("<command line>");
    Ok((
        Recipe::from_toml(&text, Some(&origin))?,
        PathBuf::from("."),
        origin,
        text,
    ))
}

/// A path from the command line as an absolute path in a flag-made recipe (whose base folder is
/// `.`, so relative paths would otherwise depend on where the recipe is resolved).
pub(crate) fn path_value(p: &Path) -> toml::Value {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    toml::Value::String(abs.to_string_lossy().into_owned())
}

/// A `key=value` flag as a TOML value (`value` in TOML syntax, else a string).
pub(crate) fn param_value(kv: &str) -> Result<(String, toml::Value), Failure> {
    let Some((k, v)) = kv.split_once('=') else {
        return Err(Failure {
            message: format!("--param {kv}: expected KEY=VALUE"),
            code: 2,
        });
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {v}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(v.to_string()));
    Ok((k.trim().to_string(), value))
}

pub(crate) fn base_dir(recipe: &Path) -> PathBuf {
    match recipe.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

pub(crate) fn context(recipe: &Recipe, base: PathBuf) -> BuildContext {
    BuildContext {
        device: DEVICE_OVERRIDE
            .get()
            .cloned()
            .flatten()
            .or_else(|| recipe.run.devices().into_iter().next())
            .unwrap_or_else(|| "cpu".into()),
        base_dir: base,
        seed: recipe.run.seed,
        device_memory: recipe.run.device_memory.map(|b| b.0),
    }
}

/// A recipe, its base folder, its origin (for messages) and its text.
pub(crate) type Loaded = (Recipe, PathBuf, PathBuf, String);

/// The recipe file a command was given, or the recipe `flags` makes from its flags.
pub(crate) fn recipe_or_flags(
    recipe: Option<&PathBuf>,
    flags: impl FnOnce() -> Result<Loaded, Failure>,
) -> Result<Loaded, Failure> {
    match recipe {
        Some(path) => {
            let (r, t) = load_recipe(path)?;
            Ok((r, base_dir(path), path.clone(), t))
        }
        None => flags(),
    }
}
