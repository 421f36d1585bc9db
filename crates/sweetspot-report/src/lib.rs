//! sweetspot-report: a run folder as one self-contained HTML page (`report.html`).
//!
//! Invariants:
//! - The report is derived: it reads the run folder's index (`run.json`) and the files its
//!   readable names point to (the scored pool, `eval.json`, training metrics), writes only
//!   `report.html` (through a temporary file and a rename) and `figures/<id>.png` (a fresh
//!   folder built beside the old one under sweetspot-core's temporary name, then swapped in),
//!   and works on a half-finished run, leaving out what is not there yet. What a killed writer
//!   left (a temporary file or folder whose process is gone) is removed before writing.
//! - Each figure is data (`figures::Plot`) drawn by one generic function on two plotters
//!   backends, so the page's SVG and the PNG copy show the same thing.
//! - Self-contained: figures are inline SVG (the viewer renders the text), styles are inline,
//!   nothing is fetched; the PNG copies are drawn with a font compiled into the binary (Ubuntu
//!   Light, from the `epaint_default_fonts` crate), never a system font. The one inline script
//!   marks each figure's rendered size on the page (`data-rendered`) so a browser check can
//!   read it.

mod analysis;
mod figures;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use sweetspot_core::atomic::{TEMP_PREFIX, TEMP_SUFFIX};

pub use analysis::{Agreement, PoolAnalysis, analyse_agreement, analyse_pool, spearman};

/// What went wrong, in words (file first).
pub type Error = String;

/// A figure: an id (its element id and its PNG's file name), a caption and what it shows.
struct Figure {
    id: String,
    caption: String,
    plot: figures::Plot,
}

fn read_json(path: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Writes `report.html` in the run folder `run_dir`; returns its path and the number of
/// figures.
pub fn write_report(run_dir: &Path) -> Result<(PathBuf, usize), Error> {
    let index = read_json(&run_dir.join("run.json")).ok_or_else(|| {
        format!(
            "{}: no run.json (not a sweetspot run folder, or no run has started in it)",
            run_dir.display()
        )
    })?;
    let name = index["name"].as_str().unwrap_or("run").to_string();
    let rounds = index["rounds"].as_u64().unwrap_or(1);
    let prefix = if rounds > 1 { "round1/" } else { "" };
    let mut figures = Vec::new();

    // The scored pool, per n of the run.
    let mut ns: Vec<usize> = index["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["stage"] == "pairs" && n["round"].as_u64() == Some(1))
        .filter_map(|n| n["n"].as_u64().map(|v| v as usize))
        .collect();
    ns.sort_unstable();
    ns.dedup();
    // Several reward models: `scored/<name>.jsonl` each, in the recipe's order (the score
    // nodes' order in the plan); the pool figures show the first model's scores.
    let models: Vec<String> = index["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|n| n["stage"] == "score" && n["round"].as_u64() == Some(1))
        .filter_map(|n| {
            n["label"]
                .as_str()?
                .strip_prefix("score ")
                .map(str::to_string)
        })
        .filter(|m| !m.contains(' '))
        .collect();
    let model_file = |m: &str| run_dir.join(format!("{prefix}scored/{m}.jsonl"));
    let mut scored = run_dir.join(format!("{prefix}scored.jsonl"));
    if !scored.exists()
        && let Some(m) = models.first()
    {
        scored = model_file(m);
    }
    let mut pool_note = String::new();
    if scored.exists() {
        let a = analyse_pool(&scored, &ns)?;
        pool_note = format!(
            "{} prompts; n = {}",
            a.groups,
            a.ns.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
        figures.extend(figures::pool(&a));
    }

    // Agreement of the first reward model with each other one.
    if let Some((first, rest)) = models.split_first() {
        for other in rest {
            let (fa, fb) = (model_file(first), model_file(other));
            if fa.exists() && fb.exists() {
                let a = analyse_agreement((first, &fa), (other, &fb))?;
                figures.extend(figures::agreement(&a));
            }
        }
    }
    let filters = filter_counts(run_dir, &index, prefix);

    // The eval table and the win-rate figures.
    let eval = read_json(&run_dir.join("eval.json"))
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    if !eval.is_empty() {
        figures.extend(figures::win_rates(&eval));
    }

    // Training curves.
    let mut curves = Vec::new();
    if let Some(names) = index["names"].as_object() {
        for (key, _) in names {
            let Some(policy) = key
                .strip_prefix(&format!("{prefix}metrics/"))
                .and_then(|k| k.strip_suffix(".jsonl"))
            else {
                continue;
            };
            let text = std::fs::read_to_string(run_dir.join(key)).unwrap_or_default();
            let rows: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            if !rows.is_empty() {
                curves.push((policy.to_string(), rows));
            }
        }
    }
    if !curves.is_empty() {
        figures.extend(figures::training(&curves));
    }

    let svgs = figures
        .iter()
        .map(|f| figures::svg(&f.plot))
        .collect::<Result<Vec<_>, _>>()?;
    write_pngs(&run_dir.join("figures"), &figures)?;
    let html = page(&name, &pool_note, &filters, &eval, &figures, &svgs);
    let out = run_dir.join("report.html");
    sweetspot_io::write_atomic(&out, html.as_bytes())
        .map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((out, figures.len()))
}

/// Writes every figure as `<dir>/<id>.png`: into a fresh folder beside `dir`, which then
/// replaces it, so the folder holds exactly this report's figures and never a half-written one.
fn write_pngs(dir: &Path, figures: &[Figure]) -> Result<(), Error> {
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    // Named as sweetspot-core names temporary files, so that what a killed process left here
    // is found and removed (`remove_stale_temp_files`) by the next report.
    let tmp = dir.with_file_name(format!(
        "{TEMP_PREFIX}{}-figures{TEMP_SUFFIX}",
        std::process::id()
    ));
    if let Some(parent) = dir.parent() {
        sweetspot_io::remove_stale_temp_files(parent);
    }
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| io(&tmp, e))?;
    for f in figures {
        let path = tmp.join(format!("{}.png", f.id));
        std::fs::write(&path, figures::png(&f.plot)?).map_err(|e| io(&path, e))?;
    }
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| io(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io(dir, e))
}

/// The pairs stage's counts of round 1 (or the only round) as an HTML table: per pair set and
/// dataset, the pairs written and the pairs each filter dropped (`summary.json`); empty when
/// no pairs node is complete.
fn filter_counts(run_dir: &Path, index: &serde_json::Value, prefix: &str) -> String {
    let mut sets: Vec<(String, serde_json::Value)> = Vec::new();
    if let Some(names) = index["names"].as_object() {
        for (key, _) in names {
            let Some(set) = key.strip_prefix(&format!("{prefix}pairs/")) else {
                continue;
            };
            if set.contains('/') {
                continue;
            }
            if let Some(s) = read_json(&run_dir.join(key).join("summary.json")) {
                sets.push((set.to_string(), s));
            }
        }
    }
    if sets.is_empty() {
        return String::new();
    }
    let mut filters: Vec<String> = Vec::new();
    for (_, s) in &sets {
        for d in s["datasets"].as_array().into_iter().flatten() {
            for k in d["dropped"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(k, _)| k)
            {
                if !filters.contains(k) {
                    filters.push(k.clone());
                }
            }
        }
    }
    let mut h = String::new();
    let _ = write!(
        h,
        "<h2>Pairs and filters</h2>\n<table id=\"filters\"><tr><th>pair set</th>\
         <th>dataset</th><th>ranked by</th><th>pairs</th>"
    );
    for f in &filters {
        let _ = write!(h, "<th>dropped: {}</th>", esc(f));
    }
    h.push_str("</tr>\n");
    for (set, s) in &sets {
        let rank_by = s["rank_by"].as_str().unwrap_or("reward");
        for d in s["datasets"].as_array().into_iter().flatten() {
            let _ = write!(
                h,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
                esc(set),
                esc(d["name"].as_str().unwrap_or("")),
                esc(rank_by),
                d["pairs"].as_u64().unwrap_or(0)
            );
            for f in &filters {
                let v = d["dropped"][f.as_str()]
                    .as_u64()
                    .map_or("-".to_string(), |v| v.to_string());
                let _ = write!(h, "<td>{v}</td>");
            }
            h.push_str("</tr>\n");
        }
    }
    h.push_str(
        "</table>\n<p>Filters apply in the order agree, min_margin, min_margin_sigma, \
         top_fraction; each counts the pairs it dropped of those the ones before it left.</p>\n",
    );
    h
}

fn page(
    name: &str,
    pool_note: &str,
    filters: &str,
    eval: &[serde_json::Value],
    figures: &[Figure],
    svgs: &[String],
) -> String {
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>sweetspot: {n}</title>\n<style>\
         body{{font-family:sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}}\
         table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 8px;\
         text-align:right}}th{{background:#f3f3f3}}td:first-child,th:first-child{{text-align:left}}\
         figure{{display:inline-block;margin:1em 1em 1em 0;vertical-align:top}}\
         figcaption{{font-size:90%;color:#555;max-width:640px}}\
         </style></head>\n<body>\n<h1>sweetspot run <code>{n}</code></h1>\n",
        n = esc(name)
    );
    if !pool_note.is_empty() {
        let _ = writeln!(h, "<p>Scored pool: {}.</p>", esc(pool_note));
    }
    h.push_str(filters);
    if !eval.is_empty() {
        let f = |v: &serde_json::Value| v.as_f64().unwrap_or(f64::NAN);
        let _ = writeln!(
            h,
            "<h2>Evaluation against the starting policy</h2>\n<table id=\"eval\">\
             <tr><th>policy</th><th>mean reward</th><th>mean length</th><th>win rate %</th>\
             <th>95% interval</th><th>LC win rate %</th><th>95% interval</th>\
             <th>judge win rate %</th><th>judge LC %</th></tr>"
        );
        for r in eval {
            let _ = writeln!(
                h,
                "<tr><td>{}</td><td>{:.4}</td><td>{:.1}</td><td>{:.1}</td><td>{:.1} - {:.1}</td>\
                 <td>{:.1}</td><td>{:.1} - {:.1}</td><td>{}</td><td>{}</td></tr>",
                esc(r["policy"].as_str().unwrap_or("")),
                f(&r["mean_reward"]),
                f(&r["mean_length"]),
                f(&r["win_rate"]),
                f(&r["win_rate_ci"][0]),
                f(&r["win_rate_ci"][1]),
                f(&r["lc_win_rate"]),
                f(&r["lc_win_rate_ci"][0]),
                f(&r["lc_win_rate_ci"][1]),
                r["judge"]["win_rate"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.1}")),
                r["judge"]["lc_win_rate"]
                    .as_f64()
                    .map_or("-".into(), |v| format!("{v:.1}")),
            );
        }
        let _ = writeln!(
            h,
            "</table>\n<p>Win rate: per prompt, a higher reward than the starting policy's counts \
             1, an equal one 0.5. LC: length-controlled (the win rate a logistic model in the \
             length difference predicts at equal length).</p>"
        );
    }
    if figures.is_empty() {
        let _ = writeln!(h, "<p>No figures yet: nothing of the run is complete.</p>");
    }
    for (fig, svg) in figures.iter().zip(svgs) {
        let _ = writeln!(
            h,
            "<figure id=\"{id}\">{svg}<figcaption>{} (<a href=\"figures/{id}.png\">PNG</a>)\
             </figcaption></figure>",
            esc(&fig.caption),
            id = esc(&fig.id),
        );
    }
    h.push_str(
        "<script>\nwindow.addEventListener('error', function (e) {\n  \
         document.body.setAttribute('data-error', String(e.message));\n});\n\
         window.addEventListener('load', function () {\n  \
         document.querySelectorAll('figure').forEach(function (f) {\n    \
         var s = f.querySelector('svg');\n    \
         var r = s ? s.getBoundingClientRect() : {width: 0, height: 0};\n    \
         f.setAttribute('data-rendered', Math.round(r.width) + 'x' + Math.round(r.height));\n  \
         });\n  document.body.setAttribute('data-loaded', 'yes');\n});\n</script>\n\
         </body></html>\n",
    );
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A report killed while drawing its figures leaves a temporary folder; the next report
    /// removes it (its process is gone) and keeps a live process's.
    #[test]
    fn a_killed_reports_figure_folder_is_removed_by_the_next() {
        let run = tempfile::tempdir().unwrap();
        std::fs::write(run.path().join("run.json"), r#"{"name": "t", "nodes": []}"#).unwrap();
        // No process has this id (above Linux's largest pid).
        let dead = run
            .path()
            .join(format!("{TEMP_PREFIX}4194304999-figures{TEMP_SUFFIX}"));
        std::fs::create_dir_all(&dead).unwrap();
        std::fs::write(dead.join("sigma.png"), b"half a png").unwrap();
        // Process 1 is alive wherever /proc is.
        let live = run
            .path()
            .join(format!("{TEMP_PREFIX}1-figures{TEMP_SUFFIX}"));
        std::fs::create_dir_all(&live).unwrap();

        let (html, _) = write_report(run.path()).unwrap();
        assert!(html.exists());
        assert!(run.path().join("figures").is_dir());
        assert!(!dead.exists(), "a dead process's figures were left");
        if cfg!(target_os = "linux") {
            assert!(live.exists(), "a live process's figures were removed");
        }
        let own = run.path().join(format!(
            "{TEMP_PREFIX}{}-figures{TEMP_SUFFIX}",
            std::process::id()
        ));
        assert!(!own.exists(), "the report's own temporary folder was left");
    }
}
