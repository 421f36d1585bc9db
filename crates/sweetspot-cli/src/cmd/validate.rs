//! `sweetspot validate`: check a recipe without running it.

use std::path::Path;

use crate::Failure;
use crate::common::{base_dir, check_recipe, context, load_recipe};

pub(crate) fn validate_cmd(path: &Path) -> Result<(), Failure> {
    let (recipe, text) = load_recipe(path)?;
    let ctx = context(&recipe, base_dir(path));
    let stages = sweetspot_runner::Stages::all_of(&recipe);
    let described = check_recipe(&recipe, &text, path, &ctx, stages)?;
    println!("{}: ok: {}", path.display(), described.join(", "));
    Ok(())
}
