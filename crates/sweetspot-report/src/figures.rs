//! The figures: each one data (a [`Plot`]), drawn by one generic function on any plotters
//! backend: SVG for the page, PNG (with a bundled font) for the copies beside it.

use std::collections::BTreeMap;
use std::sync::Once;

use image::ImageEncoder as _;
use plotters::coord::Shift;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;

use crate::Figure;
use crate::analysis::{Agreement, POINTS, PoolAnalysis};

const SIZE: (u32, u32) = (640, 400);
const GRID_SIZE: (u32, u32) = (560, 520);

/// What a figure shows, independent of how it is drawn.
pub(crate) enum Plot {
    /// A line chart.
    Lines {
        title: String,
        x_desc: String,
        y_desc: String,
        /// How x is laid out.
        x_axis: XAxis,
        /// The values y can take (a fraction in [0, 1], a rate in [0, 100]), when bounded: the
        /// axis never reaches past them, unless the data does.
        y_bounds: Option<(f64, f64)>,
        series: Vec<Series>,
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

/// One line of a [`Plot::Lines`].
pub(crate) struct Series {
    pub label: String,
    /// (x, y), ascending in x.
    pub points: Vec<(f64, f64)>,
    /// (x, low, high): an interval around the point at x, drawn as an error bar.
    pub intervals: Vec<(f64, f64, f64)>,
}

/// The x axis of a [`Plot::Lines`].
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum XAxis {
    /// Linear, integer ticks (optimizer steps).
    Steps,
    /// Logarithmic, ticks at the data's own x values, as integers (n, as the paper plots it).
    LogN,
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
            x_axis,
            y_bounds,
            series,
        } => lines(root, title, x_desc, y_desc, *x_axis, *y_bounds, series),
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

/// An axis: its range, where its ticks are and what they read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Axis {
    pub range: (f64, f64),
    pub ticks: Vec<f64>,
    pub labels: Vec<String>,
}

impl Axis {
    /// The label of the tick at `v` (the formatter is only asked at the ticks).
    fn label(&self, v: f64) -> String {
        self.ticks
            .iter()
            .zip(&self.labels)
            .min_by(|a, b| (a.0 - v).abs().total_cmp(&(b.0 - v).abs()))
            .map(|(_, l)| l.clone())
            .unwrap_or_default()
    }
}

/// Ticks at 1, 2 or 5 x 10^k apart over `[lo, hi]`, about `want` of them (at least `min_step`
/// apart), labelled with as many decimals as the step needs, so no two read the same.
pub(crate) fn linear_axis(lo: f64, hi: f64, want: usize, min_step: f64) -> Axis {
    let raw = ((hi - lo) / want.max(1) as f64).max(min_step).max(1e-12);
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|s| *s >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * mag);
    let decimals = (-(step.log10() + 1e-9).floor()).max(0.0) as usize;
    let first = (lo / step - 1e-9).ceil() as i64;
    let last = (hi / step + 1e-9).floor() as i64;
    let mut ticks = Vec::new();
    let mut labels = Vec::new();
    for k in first..=last {
        let v = k as f64 * step;
        ticks.push(v);
        // k = 0 is 0, never "-0".
        labels.push(if k == 0 {
            format!("{:.decimals$}", 0.0)
        } else {
            format!("{v:.decimals$}")
        });
    }
    Axis {
        range: (lo, hi),
        ticks,
        labels,
    }
}

/// A log axis over positive `xs` (drawn as ln x): a tick at each distinct x, read as an
/// integer; with more than ten, a subset about evenly spaced on the log scale, the smallest and
/// the largest always among them.
pub(crate) fn log_n_axis(xs: &[f64]) -> Axis {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| *x > 0.0).collect();
    v.sort_by(f64::total_cmp);
    v.dedup();
    if v.is_empty() {
        v.push(1.0);
    }
    let (l0, l1) = (v[0].ln(), v[v.len() - 1].ln());
    let mut keep = v.clone();
    if v.len() > 10 {
        let gap = (l1 - l0) / 9.0;
        keep = vec![v[0]];
        for &x in &v[1..v.len() - 1] {
            if x.ln() - keep[keep.len() - 1].ln() >= gap && l1 - x.ln() >= gap * 0.5 {
                keep.push(x);
            }
        }
        keep.push(v[v.len() - 1]);
    }
    let pad = ((l1 - l0) * 0.08).max(0.3);
    Axis {
        range: (l0 - pad, l1 + pad),
        ticks: keep.iter().map(|x| x.ln()).collect(),
        labels: keep
            .iter()
            .map(|x| format!("{}", x.round() as i64))
            .collect(),
    }
}

/// The y range for `values` (points and interval ends): the data with a margin; a flat series
/// (or one point) gets a span of its own size (10% of the value, or 1 about 0), so its ticks
/// still read apart. Kept within `bounds` where the data is.
pub(crate) fn y_range(values: &[f64], bounds: Option<(f64, f64)>) -> (f64, f64) {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if !(lo.is_finite() && hi.is_finite()) {
        return bounds.unwrap_or((0.0, 1.0));
    }
    let span = hi - lo;
    let (mut a, mut b) = if span <= 1e-9 * hi.abs().max(1.0) {
        let c = (lo + hi) / 2.0;
        let h = if c.abs() > 1e-9 { c.abs() * 0.1 } else { 1.0 };
        (c - h, c + h)
    } else {
        (lo - span * 0.08, hi + span * 0.08)
    };
    if let Some((b0, b1)) = bounds {
        a = a.max(b0.min(lo));
        b = b.min(b1.max(hi));
    }
    (a, b)
}

/// The axes a line chart is drawn on.
pub(crate) fn line_axes(
    x_axis: XAxis,
    y_bounds: Option<(f64, f64)>,
    series: &[Series],
) -> (Axis, Axis) {
    let xs: Vec<f64> = series
        .iter()
        .flat_map(|s| s.points.iter().map(|p| p.0))
        .filter(|x| x.is_finite())
        .collect();
    let x = match x_axis {
        XAxis::LogN => log_n_axis(&xs),
        XAxis::Steps => {
            let (lo, hi) = xs
                .iter()
                .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
                    (a.min(v), b.max(v))
                });
            let (lo, hi) = if !(lo.is_finite() && hi.is_finite()) {
                (0.0, 1.0)
            } else if hi - lo < 1.0 {
                (lo - 1.0, hi + 1.0)
            } else {
                (lo, hi)
            };
            linear_axis(lo, hi, 8, 1.0)
        }
    };
    let ys: Vec<f64> = series
        .iter()
        .flat_map(|s| {
            s.points
                .iter()
                .map(|p| p.1)
                .chain(s.intervals.iter().flat_map(|i| [i.1, i.2]))
        })
        .collect();
    let (y0, y1) = y_range(&ys, y_bounds);
    (x, linear_axis(y0, y1, 6, 0.0))
}

/// A linear coordinate whose ticks are the [`Axis`]'s own (plotters' `WithKeyPoints` does
/// not take a label formatter for f64).
struct Ticked {
    inner: RangedCoordf64,
    ticks: Vec<f64>,
}

impl Ticked {
    fn new(a: &Axis) -> Self {
        Ticked {
            inner: (a.range.0..a.range.1).into(),
            ticks: a.ticks.clone(),
        }
    }
}

impl Ranged for Ticked {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        self.inner.map(value, limit)
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            Vec::new()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> std::ops::Range<f64> {
        self.inner.range()
    }
}

#[allow(clippy::too_many_arguments)]
fn lines<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    title: &str,
    x_desc: &str,
    y_desc: &str,
    x_axis: XAxis,
    y_bounds: Option<(f64, f64)>,
    series: &[Series],
) -> Result<(), String> {
    let (xa, ya) = line_axes(x_axis, y_bounds, series);
    let fx = |x: f64| match x_axis {
        XAxis::LogN => x.ln(),
        XAxis::Steps => x,
    };
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(Ticked::new(&xa), Ticked::new(&ya))
        .map_err(err)?;
    let x_label = |v: &f64| xa.label(*v);
    let y_label = |v: &f64| ya.label(*v);
    chart
        .configure_mesh()
        .x_label_formatter(&x_label)
        .y_label_formatter(&y_label)
        .x_desc(x_desc)
        .y_desc(y_desc)
        .draw()
        .map_err(err)?;
    for (i, s) in series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|p| p.0.is_finite() && p.1.is_finite() && (x_axis == XAxis::Steps || p.0 > 0.0))
            .map(|&(x, y)| (fx(x), y))
            .collect();
        chart
            .draw_series(
                s.intervals
                    .iter()
                    .filter(|i| i.0 > 0.0 || x_axis == XAxis::Steps)
                    .map(|&(x, lo, hi)| {
                        let y = s
                            .points
                            .iter()
                            .find(|p| p.0 == x)
                            .map_or((lo + hi) / 2.0, |p| p.1);
                        ErrorBar::new_vertical(fx(x), lo, y, hi, color.stroke_width(1), 8)
                    }),
            )
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(err)?
            .label(s.label.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
        chart
            .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
            .map_err(err)?;
    }
    if series.len() > 1 || !series.iter().all(|s| s.label.is_empty()) {
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

/// The span of a histogram of values from `lo` to `hi`: the data's own, or, when they are all
/// one value, a span around it (10% of it, or [0, 1] about 0), so every value falls in its
/// own bin and the ticks read apart.
pub(crate) fn histogram_range(lo: f64, hi: f64) -> (f64, f64) {
    if !(lo.is_finite() && hi.is_finite()) {
        (0.0, 1.0)
    } else if hi > lo {
        (lo, hi)
    } else if lo.abs() > 1e-9 {
        let h = lo.abs() * 0.1;
        ((lo - h).max(if lo >= 0.0 { 0.0 } else { f64::MIN }), lo + h)
    } else {
        (0.0, 1.0)
    }
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
    let (lo, hi) = histogram_range(lo, hi);
    let bins = 20usize;
    let width = (hi - lo) / bins as f64;
    let mut counts = vec![0u32; bins];
    for &v in values {
        let b = (((v - lo) / width) as usize).min(bins - 1);
        counts[b] += 1;
    }
    let top = counts.iter().copied().max().unwrap_or(1).max(1);
    let xa = linear_axis(lo, hi, 6, 0.0);
    let mut chart = ChartBuilder::on(root)
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(Ticked::new(&xa), 0u32..top + 1)
        .map_err(err)?;
    let x_label = |v: &f64| xa.label(*v);
    chart
        .configure_mesh()
        .x_label_formatter(&x_label)
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
                ("n", XAxis::LogN),
                ("fraction of prompts", Some((0.0, 1.0))),
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
                ("n", XAxis::LogN),
                ("z", None),
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
            plot: lines_plot(
                "reward at each point",
                ("n", XAxis::LogN),
                ("mean reward", None),
                per_point,
            ),
        });
    }
    out
}

/// A line chart of plain series (no intervals).
fn lines_plot(
    title: &str,
    (x, x_axis): (&str, XAxis),
    (y, y_bounds): (&str, Option<(f64, f64)>),
    series: Vec<(String, Vec<(f64, f64)>)>,
) -> Plot {
    Plot::Lines {
        title: title.into(),
        x_desc: x.into(),
        y_desc: y.into(),
        x_axis,
        y_bounds,
        series: series
            .into_iter()
            .map(|(label, points)| Series {
                label,
                points,
                intervals: Vec::new(),
            })
            .collect(),
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
    // Per dataset: (n, win rate, its bootstrap interval where eval.json holds one).
    type Row = (f64, f64, Option<(f64, f64)>);
    let mut by_dataset: BTreeMap<String, Vec<Row>> = BTreeMap::new();
    let mut rates: BTreeMap<(String, usize), f64> = BTreeMap::new();
    for r in eval {
        let (Some(p), Some(w)) = (r["policy"].as_str(), r["win_rate"].as_f64()) else {
            continue;
        };
        if let Some((d, n)) = split_n(p) {
            let ci = match (r["win_rate_ci"][0].as_f64(), r["win_rate_ci"][1].as_f64()) {
                (Some(lo), Some(hi)) if lo <= hi => Some((lo, hi)),
                _ => None,
            };
            by_dataset
                .entry(d.to_string())
                .or_default()
                .push((n as f64, w, ci));
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
    let scaling: Vec<Series> = by_dataset
        .into_iter()
        .filter(|(_, v)| !v.is_empty())
        .map(|(label, mut v)| {
            v.sort_by(|a, b| a.0.total_cmp(&b.0));
            Series {
                label,
                points: v.iter().map(|r| (r.0, r.1)).collect(),
                intervals: v
                    .iter()
                    .filter_map(|r| r.2.map(|(lo, hi)| (r.0, lo, hi)))
                    .collect(),
            }
        })
        .collect();
    if !scaling.is_empty() {
        out.push(Figure {
            id: "scaling".into(),
            caption: "Win rate against the starting policy as n grows (n on a log scale), per \
                      dataset, with the bootstrap 95% interval of each point as a bar: the \
                      paper's scaling curve."
                .into(),
            plot: Plot::Lines {
                title: "win rate against n".into(),
                x_desc: "n".into(),
                y_desc: "win rate %".into(),
                x_axis: XAxis::LogN,
                y_bounds: Some((0.0, 100.0)),
                series: scaling,
            },
        });
    }
    out
}

/// Two reward models' agreement: the histogram of per-prompt Spearman correlations and the
/// share of grid pairs the second model reverses, per cell.
pub(crate) fn agreement(a: &Agreement) -> Vec<Figure> {
    let mut out = Vec::new();
    let (first, second) = (&a.models.0, &a.models.1);
    if !a.spearman.is_empty() {
        out.push(Figure {
            id: format!("agreement-spearman-{first}-{second}"),
            caption: format!(
                "Spearman rank correlation of the rewards of {first} and {second} over each \
                 prompt's samples ({} of {} prompts; a prompt either model scores flat has \
                 none): 1, the models rank the samples alike; 0, unrelated; -1, reversed.",
                a.spearman.len(),
                a.groups
            ),
            plot: Plot::Histogram {
                title: format!("per-prompt Spearman, {first} vs {second}"),
                x_desc: "Spearman rank correlation".into(),
                values: a.spearman.clone(),
            },
        });
    }
    if a.pairs.iter().flatten().any(|&c| c > 0) {
        let labels: Vec<String> = POINTS.iter().map(|p| format!("{p}")).collect();
        out.push(Figure {
            id: format!("agreement-reversed-{first}-{second}"),
            caption: format!(
                "Share of grid pairs (picked and ordered by {first}; chosen point by row, \
                 rejected by column) whose order {second} reverses (a strictly lower reward for \
                 the chosen response), in percent of the prompts that give the cell a pair; \
                 grey: no such pair."
            ),
            plot: Plot::Heatmap {
                title: format!("% of grid pairs {second} reverses"),
                labels,
                cells: a.reversed.clone(),
            },
        });
    }
    out
}

/// Loss, reward margin and accuracy per optimizer step, one line per policy.
pub(crate) fn training(curves: &[(String, Vec<serde_json::Value>)]) -> Vec<Figure> {
    let mut out = Vec::new();
    for (key, id, title, bounds) in [
        ("loss", "train-loss", "training loss", None),
        (
            "rewards/margins",
            "train-margins",
            "reward margin (chosen - rejected)",
            None,
        ),
        (
            "rewards/accuracies",
            "train-accuracies",
            "reward accuracy",
            Some((0.0, 1.0)),
        ),
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
            plot: lines_plot(title, ("step", XAxis::Steps), (key, bounds), series),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `<text>` elements of an SVG: (x, y, text).
    fn texts(svg: &str) -> Vec<(f64, f64, String)> {
        let mut out = Vec::new();
        let mut rest = svg;
        while let Some(at) = rest.find("<text ") {
            rest = &rest[at..];
            let end = rest.find("</text>").unwrap();
            let el = &rest[..end];
            let attr = |name: &str| -> f64 {
                let a = el.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                el[a..a + el[a..].find('"').unwrap()].parse().unwrap()
            };
            let body = el[el.find('>').unwrap() + 1..].trim().to_string();
            out.push((attr("x"), attr("y"), body));
            rest = &rest[end..];
        }
        out
    }

    /// The `<line>` elements of an SVG: (x1, y1, x2, y2).
    fn line_elements(svg: &str) -> Vec<(f64, f64, f64, f64)> {
        svg.split("<line ")
            .skip(1)
            .map(|el| {
                let attr = |name: &str| -> f64 {
                    let a = el.find(&format!(" {name}=\"")).unwrap() + name.len() + 3;
                    el[a..a + el[a..].find('"').unwrap()].parse().unwrap()
                };
                (attr("x1"), attr("y1"), attr("x2"), attr("y2"))
            })
            .collect()
    }

    /// A tick label and its pixel position along its axis.
    type Tick = (f64, String);

    /// A line chart's tick labels as drawn: (x ticks left to right, y ticks bottom to top),
    /// each with its pixel position along its axis.
    fn ticks(svg: &str) -> (Vec<Tick>, Vec<Tick>) {
        let t = texts(svg);
        // The y labels sit right-aligned in the 56 px label area, the x labels in the 40 px
        // strip above the x description (see `lines`).
        let mut y: Vec<(f64, String)> = t
            .iter()
            .filter(|e| e.0 > 30.0 && e.0 < 80.0)
            .map(|e| (e.1, e.2.clone()))
            .collect();
        let mut x: Vec<(f64, String)> = t
            .iter()
            .filter(|e| e.0 > 80.0 && e.1 > 340.0 && e.1 < 375.0)
            .map(|e| (e.0, e.2.clone()))
            .collect();
        x.sort_by(|a, b| a.0.total_cmp(&b.0));
        y.sort_by(|a, b| b.0.total_cmp(&a.0));
        (x, y)
    }

    fn labels(v: &[(f64, String)]) -> Vec<&str> {
        v.iter().map(|e| e.1.as_str()).collect()
    }

    /// Labels that read as numbers, each once, at least two.
    fn assert_distinct_numbers(what: &str, v: &[(f64, String)]) {
        let l = labels(v);
        assert!(l.len() >= 2, "{what}: {l:?}");
        let mut d = l.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), l.len(), "{what}: ticks repeat: {l:?}");
        for s in &l {
            assert!(s.parse::<f64>().is_ok(), "{what}: {s:?} is not a number");
        }
    }

    /// The figure `id` of `figs`, as SVG.
    fn svg_of(figs: &[Figure], id: &str) -> String {
        svg(&figs.iter().find(|f| f.id == id).unwrap().plot).unwrap()
    }

    /// The quickstart's win rate against n: every policy at 56.25, n = 8 and 16. The n axis
    /// reads 8 and 16 (integers, nothing else); the y axis has distinct ticks around 56.25;
    /// each point's bootstrap interval is drawn as a vertical bar from its low to its high
    /// end, where the y ticks put them.
    #[test]
    fn the_quickstarts_win_rate_figure_reads_right() {
        let eval: Vec<serde_json::Value> = serde_json::from_str(QUICKSTART_EVAL).unwrap();
        let figs = win_rates(&eval);
        let s = svg_of(&figs, "scaling");
        let (x, y) = ticks(&s);
        assert_eq!(labels(&x), ["8", "16"]);
        assert_distinct_numbers("y", &y);
        // 8 to 16 is as far as 4 to 8 would be: a log axis, with both well inside the plot.
        let gap = x[1].0 - x[0].0;
        assert!(
            x[0].0 > 60.0 + gap * 0.1 && x[1].0 < 630.0 - gap * 0.1,
            "{x:?}"
        );
        // Pixel row of a win rate, from two y ticks.
        let (p0, v0) = (y[0].0, y[0].1.parse::<f64>().unwrap());
        let (p1, v1) = (y[y.len() - 1].0, y[y.len() - 1].1.parse::<f64>().unwrap());
        let row = |v: f64| p0 + (v - v0) / (v1 - v0) * (p1 - p0);
        assert!(v0 < 56.25 && v1 > 56.25, "{y:?}");
        // The text's y is its top; the tick line is a few pixels lower: allow 12.
        let lines = line_elements(&s);
        for (col, lo, hi) in [
            (x[0].0, 25.0, 87.5),
            (x[1].0, 31.25, 81.25),
            (x[1].0, 37.5, 75.0),
        ] {
            let bar = lines.iter().any(|l| {
                (l.0 - l.2).abs() < 0.5
                    && (l.0 - col).abs() < 12.0
                    && (l.1.max(l.3) - row(lo)).abs() < 12.0
                    && (l.1.min(l.3) - row(hi)).abs() < 12.0
            });
            assert!(bar, "no interval {lo} - {hi} at x = {col}: {lines:?}");
        }
        // Without intervals in eval.json, no bars: the test above can fail.
        let bare: Vec<serde_json::Value> = eval
            .iter()
            .map(|r| {
                let mut r = r.clone();
                r.as_object_mut().unwrap().remove("win_rate_ci");
                r
            })
            .collect();
        let s = svg_of(&win_rates(&bare), "scaling");
        let (x, _) = ticks(&s);
        let bars = line_elements(&s)
            .into_iter()
            .filter(|l| (l.0 - l.2).abs() < 0.5 && (l.0 - x[0].0).abs() < 12.0)
            .filter(|l| (l.1 - l.3).abs() > 5.0 && (l.1 - l.3).abs() < 250.0)
            .count();
        assert_eq!(bars, 0);
    }

    /// One point, or a flat series, still gets a y range around it with distinct ticks, and
    /// one n reads as that integer.
    #[test]
    fn one_point_or_a_flat_series_gets_distinct_ticks() {
        for (value, ci) in [(56.25, None), (0.0, None), (100.0, Some((90.0, 100.0)))] {
            let mut row = serde_json::json!({"policy": "max-min-n16", "win_rate": value});
            if let Some((lo, hi)) = ci {
                row["win_rate_ci"] = serde_json::json!([lo, hi]);
            }
            let s = svg_of(&win_rates(&[row]), "scaling");
            let (x, y) = ticks(&s);
            assert_eq!(labels(&x), ["16"], "{value}");
            assert_distinct_numbers(&format!("y of {value}"), &y);
            let ys: Vec<f64> = y.iter().map(|e| e.1.parse().unwrap()).collect();
            // Within what a win rate can be.
            assert!(ys[0] >= 0.0 && ys[ys.len() - 1] <= 100.0, "{value}: {ys:?}");
        }
        // The pool's figures at one n, every value flat.
        let a = PoolAnalysis {
            groups: 3,
            ns: vec![16],
            sigmas: vec![0.25; 3],
            max_beyond: vec![0.0],
            min_beyond: vec![0.0],
            z_max: vec![1.5],
            z_min: vec![-1.5],
            point_rewards: vec![[0.5; 7]],
        };
        let figs = pool(&a);
        for id in ["beyond", "zscores", "points"] {
            let (x, y) = ticks(&svg_of(&figs, id));
            assert_eq!(labels(&x), ["16"], "{id}");
            assert_distinct_numbers(&format!("{id} y"), &y);
        }
        let (x, _) = ticks(&svg_of(&figs, "sigma"));
        assert_distinct_numbers("sigma x", &x);
        // Training: one step, a flat loss.
        let rows = vec![serde_json::json!({"step": 1, "loss": 0.65,
            "rewards/margins": 0.0, "rewards/accuracies": 0.0})];
        let figs = training(&[("grid_max_vs_-2-n16".into(), rows)]);
        for f in &figs {
            let (x, y) = ticks(&svg(&f.plot).unwrap());
            assert_distinct_numbers(&format!("{} x", f.id), &x);
            assert!(
                labels(&x).iter().all(|l| !l.contains('.')),
                "{}: {x:?}",
                f.id
            );
            assert_distinct_numbers(&format!("{} y", f.id), &y);
        }
    }

    /// The paper's n = 2, 4, ..., 400 (every even n up to 16, then 32, ... , 256, 400): integer
    /// ticks on a log axis, the ends among them, evenly spread, none a float.
    #[test]
    fn many_n_read_as_integers_on_a_log_axis() {
        let mut ns: Vec<usize> = (1..=8).map(|k| 2 * k).collect();
        ns.extend([32, 64, 128, 256, 400]);
        let eval: Vec<serde_json::Value> = ns
            .iter()
            .map(|n| {
                serde_json::json!({"policy": format!("grid_max_vs_-2-n{n}"),
                    "win_rate": 40.0 + (*n as f64).ln() * 3.0,
                    "win_rate_ci": [30.0 + (*n as f64).ln(), 55.0 + (*n as f64).ln()]})
            })
            .collect();
        let (x, y) = ticks(&svg_of(&win_rates(&eval), "scaling"));
        let l = labels(&x);
        assert_eq!(l.first(), Some(&"2"));
        assert_eq!(l.last(), Some(&"400"));
        assert!(l.len() >= 5 && l.len() <= 10, "{l:?}");
        for s in &l {
            assert!(s.parse::<u64>().is_ok(), "{s:?}");
        }
        // On a log scale 2 -> 4 is as wide as 128 -> 256.
        let at = |n: &str| x.iter().find(|e| e.1 == n).map(|e| e.0);
        if let (Some(a), Some(b), Some(c), Some(d)) = (at("2"), at("4"), at("128"), at("256")) {
            assert!(((b - a) - (d - c)).abs() < 2.0, "{x:?}");
        }
        assert_distinct_numbers("y", &y);
    }

    #[test]
    fn tick_labels_are_distinct_at_any_scale() {
        for (lo, hi) in [
            (0.0, 1.0),
            (56.2, 56.3),
            (-3.0, 1e-7),
            (-0.004, 0.003),
            (1e5, 3e5),
        ] {
            let a = linear_axis(lo, hi, 6, 0.0);
            assert!(a.ticks.len() >= 2, "{lo}..{hi}: {a:?}");
            let mut d = a.labels.clone();
            d.dedup();
            assert_eq!(d.len(), a.labels.len(), "{lo}..{hi}: {a:?}");
            assert!(
                !a.labels
                    .iter()
                    .any(|l| l.starts_with("-0") && l.parse::<f64>() == Ok(0.0))
            );
        }
        // A histogram of one value puts it inside the span.
        assert_eq!(histogram_range(0.0, 0.0), (0.0, 1.0));
        let (a, b) = histogram_range(2.0, 2.0);
        assert!(a < 2.0 && b > 2.0);
    }

    /// An `eval.json` shaped like the quickstart's (8 eval prompts, so rates are multiples of
    /// 6.25; here every policy wins 9 of 16, the flat series the report once drew as ticks that
    /// all read 56.25).
    const QUICKSTART_EVAL: &str = r#"[
  {"policy": "base", "mean_reward": 0.41, "mean_length": 31.2, "prompts": 8,
   "win_rate": 50.0, "win_rate_ci": [50.0, 50.0], "lc_win_rate": 50.0,
   "lc_win_rate_ci": [50.0, 50.0], "length_weight": 0.0},
  {"policy": "grid_max_vs_-2-n8", "mean_reward": 0.44, "mean_length": 30.9, "prompts": 8,
   "win_rate": 56.25, "win_rate_ci": [25.0, 87.5], "lc_win_rate": 55.1,
   "lc_win_rate_ci": [22.0, 86.0], "length_weight": 0.01},
  {"policy": "grid_max_vs_-2-n16", "mean_reward": 0.45, "mean_length": 31.0, "prompts": 8,
   "win_rate": 56.25, "win_rate_ci": [31.25, 81.25], "lc_win_rate": 56.0,
   "lc_win_rate_ci": [30.0, 80.0], "length_weight": 0.02},
  {"policy": "max-min-n8", "mean_reward": 0.43, "mean_length": 31.5, "prompts": 8,
   "win_rate": 56.25, "win_rate_ci": [25.0, 87.5], "lc_win_rate": 57.0,
   "lc_win_rate_ci": [24.0, 88.0], "length_weight": -0.01},
  {"policy": "max-min-n16", "mean_reward": 0.44, "mean_length": 31.1, "prompts": 8,
   "win_rate": 56.25, "win_rate_ci": [37.5, 75.0], "lc_win_rate": 56.5,
   "lc_win_rate_ci": [36.0, 76.0], "length_weight": 0.0}
]"#;
}
