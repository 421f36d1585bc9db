//! One module per command.

pub(crate) mod batch;
pub(crate) mod generate;
pub(crate) mod pairs;
pub(crate) mod plugins;
pub(crate) mod report;
pub(crate) mod run;
pub(crate) mod score;
pub(crate) mod serve;
pub(crate) mod stats;
pub(crate) mod train;
pub(crate) mod validate;
