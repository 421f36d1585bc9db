use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use sweetspot_core::Progress;

/// A [`Progress`] drawn as an indicatif bar on stderr (hidden when stderr is not a terminal or
/// when `quiet`).
#[derive(Debug, Clone)]
pub struct BarProgress {
    bar: ProgressBar,
}

/// The bars of a run drawn together: the run's overall line first, each stage's bar below it.
fn multi() -> &'static MultiProgress {
    static MULTI: std::sync::OnceLock<MultiProgress> = std::sync::OnceLock::new();
    MULTI.get_or_init(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()))
}

/// Runs `f` (which writes to stderr, such as a log line) with the bars hidden, so that they
/// are redrawn below its output instead of garbling it.
pub fn suspend<R>(f: impl FnOnce() -> R) -> R {
    multi().suspend(f)
}

impl BarProgress {
    /// A bar counting `unit` (`bytes`, `samples`, ...), with `label` in front.
    pub fn new(label: &str, unit: &str, quiet: bool) -> Self {
        let bar = if quiet {
            ProgressBar::hidden()
        } else {
            multi().add(ProgressBar::new_spinner())
        };
        let template = if unit == "bytes" {
            "{prefix} [{elapsed_precise}] {wide_bar} {binary_bytes}/{binary_total_bytes} ({binary_bytes_per_sec}, eta {eta}) {msg}"
        } else {
            "{prefix} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} ({per_sec}, eta {eta}) {msg}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        bar.set_prefix(label.to_string());
        bar.enable_steady_tick(Duration::from_millis(250));
        Self { bar }
    }

    /// Sets the position outright.
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
    }

    /// Removes the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
        multi().remove(&self.bar);
    }
}

impl Progress for BarProgress {
    fn set_total(&self, total: Option<u64>) {
        match total {
            Some(t) => self.bar.set_length(t),
            None => self.bar.unset_length(),
        }
    }

    fn advance(&self, n: u64) {
        self.bar.inc(n);
    }

    fn message(&self, message: &str) {
        self.bar.set_message(message.to_string());
    }
}
