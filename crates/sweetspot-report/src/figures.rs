//! The figures: each one data (a [`Plot`]), drawn by one generic function on any plotters
//! backend: SVG for the page, PNG (with a bundled font) for the copies beside it.

use std::collections::BTreeMap;
use std::sync::Once;

use image::ImageEncoder as _;
use plotters::coord::Shift;
use plotters::prelude::*;

use crate::Figure;
use crate::analysis::{POINTS, PoolAnalysis};

const SIZE: (u32, u32) = (640, 400);
const GRID_SIZE: (u32, u32) = (560, 520);

/// What a figure shows, independent of how it is drawn.
pub(crate) enum Plot {
    /// A line chart: each series is (label, points).
    Lines {
        title: String,
        x_desc: String,
        y_desc: String,
        series: Vec<(String, Vec<(f64, f64)>)>,
    },
    /// A histogram of `values` in 20 bins.
    Histogram {
        title: String,
        x_desc: String,
        values: Vec<f64>,
    },
    /// The paper's 7 x 7 table: `cells[chosen][rejected]`, a win rate in percent or none.
    Heatmap {
        title: String,
        labels: Vec<String>,
        cells: Vec<Vec<Option<f64>>>,
    },
}

impl Plot {
    fn size(&self) -> (u32, u32) {
        match self {
            Plot::Heatmap { .. } => GRID_SIZE,
            _ => SIZE,
        }
    }
}

fn err(e: impl std::fmt::Display) -> String {
    format!("drawing a figure: {e}")
}

/// The font the PNG copies are drawn with (and text is measured with): Ubuntu Light, shipped
/// inside the `epaint_default_fonts` crate, so nothing is read from the system.
fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Registration only fails on bytes that are not a font; these are a fixed, valid one.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            epaint_default_fonts::UBUNTU_LIGHT,
        );
    });
}

/// The figure as an SVG document.
pub(crate) fn svg(plot: &Plot) -> Result<String, String> {
    register_font();
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, plot.size()).into_drawing_area();
        draw(plot, &root)?;
        root.present().map_err(err)?;
    }
    Ok(out)
}

/// The figure as a PNG file's bytes.
pub(crate) fn png(plot: &Plot) -> Result<Vec<u8>, String> {
    register_font();
    let (w, h) = plot.size();
    let mut rgb = vec![0u8; w as usize * h as usize * 3];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        draw(plot, &root)?;
        root.present().map_err(err)?;
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(err)?;
    Ok(out)
}

fn draw<DB: DrawingBackend>(plot: &Plot, root: &DrawingArea<DB, Shift>) -> Result<(), String> {
    root.fill(&WHITE).map_err(err)?;
    match plot {
        Plot::Lines {
            title,
            x_desc,
            y_desc,
            series,
        } => lines(root, title, x_desc, y_desc, series),
        Plot::Histogram {
            title,
            x_desc,
            values,
        } => histogram(root, title, x_desc, values),
        Plot::Heatmap {
            title,
            labels,
            cells,
        } => heatmap(root, title, labels, cells),
    }
}

fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    series: &[(String, Vec<(f64, f64)>)],
) -> Result<(), String> {
    let all: Vec<(f64, f64)> = series.iter().flat_map(|s| s.1.iter().copied()).collect();
    let (mut x0, mut x1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.0), b.max(p.0))
        });
    let (mut y0, mut y1) = all
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| {
            (a.min(p.1), b.max(p.1))
        });
    if !(x0.is_finite() && x1.is_finite()) {
        (x0, x1) = (0.0, 1.0);
    }
    if !(y0.is_finite() && y1.is_finite()) {
        (y0, y1) = (0.0, 1.0);
    }
    if x1 - x0 < 1e-12 {
        (x0, x1) = (x0 - 1.0, x1 + 1.0);
    }
    let pad = ((y1 - y0) * 0.08).max(1e-6);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(x0..x1, (y0 - pad)..(y1 + pad))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, (label, pts)) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    if series.len() > 1 || !series.iter().all(|s| s.0.is_empty()) {
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperRight)
            .draw()
            .map_err(err)?;
    }
    Ok(())
}

fn histogram<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    values: &[f64],
) -> Result<(), String> {
    let (lo, hi) = values
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let bins = 20usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for &v in values {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(lo..hi, 0u32..top + 1)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(x_desc)
        .y_desc("prompts")
        .draw()
        .map_err(err)?;
    chart
        .draw_series(counts.iter().enumerate().map(|(i, &c)| {
            let x = lo + i as f64 * width;
            Rectangle::new([(x, 0), (x + width, c)], BLUE.mix(0.6).filled())
        }))
        .map_err(err)?;
    Ok(())
}

fn heatmap<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    labels: &[String],
    cells: &[Vec<Option<f64>>],
) -> Result<(), String> {
    let k = labels.len();
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(44)
        .y_label_area_size(56)
        // Cell i spans [i - 0.5, i + 0.5], so the axis's key points are the cells' centres.
        .build_cartesian_2d(-0.5f64..k as f64 - 0.5, -0.5f64..k as f64 - 0.5)
        .map_err(err)?;
    let label = |v: &f64| {
        let i = v.round();
        if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < k {
            labels[i as usize].clone()
        } else {
            String::new()
        }
    };
    chart
        .configure_mesh()
        .disable_mesh()
        .x_labels(k)
        .y_labels(k)
        .x_label_formatter(&label)
        .y_label_formatter(&label)
        .x_desc("rejected")
        .y_desc("chosen")
        .draw()
        .map_err(err)?;
    for (ci, row) in cells.iter().enumerate() {
        for (ri, cell) in row.iter().enumerate() {
            let (x, y) = (ri as f64 - 0.5, ci as f64 - 0.5);
            let rect = [(x + 0.03, y + 0.03), (x + 0.97, y + 0.97)];
            match *cell {
                Some(w) => {
                    let t = (w / 100.0).clamp(0.0, 1.0);
                    let color = if t >= 0.5 {
                        let k = ((t - 0.5) * 2.0 * 200.0) as u8;
                        RGBColor(255, 255 - k, 255 - k)
                    } else {
                        let k = ((0.5 - t) * 2.0 * 200.0) as u8;
                        RGBColor(255 - k, 255 - k, 255)
                    };
                    chart
                        .draw_series(std::iter::once(Rectangle::new(rect, color.filled())))
                        .map_err(err)?;
                    chart
                        .draw_series(std::iter::once(Text::new(
                            format!("{w:.0}"),
                            (x + 0.3, y + 0.6),
                            ("sans-serif", 14),
                        )))
                        .map_err(err)?;
                }
                None => {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            rect,
                            RGBColor(238, 238, 238).filled(),
                        )))
                        .map_err(err)?;
                }
            }
        }
    }
    Ok(())
}

/// The analysis figures of the scored pool.
pub(crate) fn pool(a: &PoolAnalysis) -> Vec<Figure> {
    let mut out = Vec::new();
    let largest = a.ns.last().copied().unwrap_or(0);
    if !a.sigmas.is_empty() {
        out.push(Figure {
            id: "sigma".into(),
            caption: format!(
                "Per-prompt standard deviation of the rewards (n = {largest}): prompts whose \
                 samples the reward model barely tells apart give noisy pairs."
            ),
            plot: Plot::Histogram {
                title: format!("per-prompt sigma, n = {largest}"),
                x_desc: "sigma".into(),
                values: a.sigmas.clone(),
            },
        });
    }
    let xs: Vec<f64> = a.ns.iter().map(|&n| n as f64).collect();
    let series = |v: &[f64]| {
        xs.iter()
            .copied()
            .zip(v.iter().copied())
            .collect::<Vec<_>>()
    };
    if !xs.is_empty() {
        out.push(Figure {
            id: "beyond".into(),
            caption: "How often the max lies above mu + 2 sigma and the min below mu - 2 sigma, \
                      as n grows: the extremes drift into the tails, the paper's argument for \
                      why max-min pairs degrade."
                .into(),
            plot: lines_plot(
                "extremes beyond 2 sigma",
                "n",
                "fraction of prompts",
                vec![
                    ("max > mu + 2 sigma".into(), series(&a.max_beyond)),
                    ("min < mu - 2 sigma".into(), series(&a.min_beyond)),
                ],
            ),
        });
        out.push(Figure {
            id: "zscores".into(),
            caption: "Mean z-score of the max and of the min reward per prompt, as n grows.".into(),
            plot: lines_plot(
                "mean z-score of max and min",
                "n",
                "z",
                vec![
                    ("max".into(), series(&a.z_max)),
                    ("min".into(), series(&a.z_min)),
                ],
            ),
        });
        let per_point: Vec<(String, Vec<(f64, f64)>)> = POINTS
            .iter()
            .enumerate()
            .map(|(j, p)| {
                let v: Vec<f64> = a.point_rewards.iter().map(|r| r[j]).collect();
                (format!("{p}"), series(&v))
            })
            .collect();
        out.push(Figure {
            id: "points".into(),
            caption: "Mean reward of the sample at each of the seven points (min, mu + k sigma \
                      for k = -2 ... 2, max), as n grows."
                .into(),
            plot: lines_plot("reward at each point", "n", "mean reward", per_point),
        });
    }
    out
}

fn lines_plot(title: &str, x: &str, y: &str, series: Vec<(String, Vec<(f64, f64)>)>) -> Plot {
    Plot::Lines {
        title: title.into(),
        x_desc: x.into(),
        y_desc: y.into(),
        series,
    }
}

/// `name-n<N>` -> (`name`, N).
fn split_n(policy: &str) -> Option<(&str, usize)> {
    let (d, n) = policy.rsplit_once("-n")?;
    Some((d, n.parse().ok()?))
}

/// The grid heatmap and the win rate against n, from the eval table.
pub(crate) fn win_rates(eval: &[serde_json::Value]) -> Vec<Figure> {
    let mut out = Vec::new();
    let mut by_dataset: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    let mut rates: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for r in eval {
        let (Some(p), Some(w)) = (r["policy"].as_str(), r["win_rate"].as_f64()) else {
            continue;
        };
        if let Some((d, n)) = split_n(p) {
            by_dataset
                .entry(d.to_string())
                .or_default()
                .push((n as f64, w));
            rates.insert((d.to_string(), n), w);
        }
    }
    // The paper's table: win rate of every grid dataset at the largest n that has any.
    let labels: Vec<String> = POINTS.iter().map(|p| format!("{p}")).collect();
    let grid_n = rates
        .keys()
        .filter(|(d, _)| d.starts_with("grid_"))
        .map(|(_, n)| *n)
        .max();
    if let Some(n) = grid_n {
        let cells = labels
            .iter()
            .map(|c| {
                labels
                    .iter()
                    .map(|r| rates.get(&(format!("grid_{c}_vs_{r}"), n)).copied())
                    .collect()
            })
            .collect();
        out.push(Figure {
            id: "grid".into(),
            caption: format!(
                "Win rate against the starting policy of the policy trained on each grid \
                 dataset (chosen point by row, rejected point by column; n = {n}); grey: not \
                 trained in this run. The paper's table."
            ),
            plot: Plot::Heatmap {
                title: format!("win rate % by pair, n = {n}"),
                labels: labels.clone(),
                cells,
            },
        });
    }
    let scaling: Vec<(String, Vec<(f64, f64)>)> = by_dataset
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(d, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            (d, v)
        })
        .collect();
    if !scaling.is_empty() {
        out.push(Figure {
            id: "scaling".into(),
            caption: "Win rate against the starting policy as n grows, per dataset: the \
                      paper's scaling curve."
                .into(),
            plot: lines_plot("win rate against n", "n", "win rate %", scaling),
        });
    }
    out
}

/// Loss, reward margin and accuracy per optimizer step, one line per policy.
pub(crate) fn training(curves: &[(String, Vec<serde_json::Value>)]) -> Vec<Figure> {
    let mut out = Vec::new();
    for (key, id, title) in [
        ("loss", "train-loss", "training loss"),
        (
            "rewards/margins",
            "train-margins",
            "reward margin (chosen - rejected)",
        ),
        ("rewards/accuracies", "train-accuracies", "reward accuracy"),
    ] {
        let series: Vec<(String, Vec<(f64, f64)>)> = curves
            .iter()
            .map(|(name, rows)| {
                let pts = rows
                    .iter()
                    .filter_map(|r| Some((r["step"].as_f64()?, r[key].as_f64()?)))
                    .collect();
                (name.clone(), pts)
            })
            .collect();
        out.push(Figure {
            id: id.into(),
            caption: format!("{title} per optimizer step, one line per policy (metrics.jsonl)"),
            plot: lines_plot(title, "step", key, series),
        });
    }
    out
}
