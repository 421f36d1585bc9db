use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, PairStrategy, PairStrategyConfig, PluginError, Point, ScoredGroup, Selection,
};

/// `grid`: every pair (chosen at the higher point, rejected at the lower) over a list of reward
/// points, all datasets from one pass over the input. The default points
/// {min, -2, -1, 0, 1, 2, max} give the paper's 21 datasets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Grid {
    /// The points; order does not matter.
    #[serde(default = "default_points")]
    pub points: Vec<Point>,
    /// Use only the first n samples of each group.
    pub n: Option<usize>,
}

fn default_points() -> Vec<Point> {
    sweetspot_core::points::PAPER_POINTS.to_vec()
}

impl Default for Grid {
    fn default() -> Self {
        Self {
            points: default_points(),
            n: None,
        }
    }
}

/// A built grid: points sorted from lowest to highest, and the (chosen, rejected) point pairs.
#[derive(Debug)]
struct GridStrategy {
    points: Vec<Point>,
    pairs: Vec<(usize, usize)>,
    n: Option<usize>,
}

#[sweetspot_core::plugin(
    name = "grid",
    description = "every (higher, lower) pair of reward points in one pass; default: the paper's 21 datasets",
    example = "type = \"grid\""
)]
impl PairStrategyConfig for Grid {
    fn own_n(&self) -> Option<usize> {
        self.n
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError> {
        crate::check_n("grid", self.n)?;
        let mut points = self.points.clone();
        points.sort_by(|a, b| a.order_key().total_cmp(&b.order_key()));
        if let Some(w) = points
            .windows(2)
            .find(|w| w[0].order_key() == w[1].order_key())
        {
            return Err(PluginError::config(
                "grid",
                format!("`points` lists {} twice", w[0]),
            ));
        }
        if points.len() < 2 {
            return Err(PluginError::config(
                "grid",
                "`points` needs at least two points",
            ));
        }
        // Chosen from the highest point down, rejected from the lowest point up.
        let mut pairs = Vec::new();
        for c in (0..points.len()).rev() {
            for r in 0..c {
                pairs.push((c, r));
            }
        }
        Ok(Box::new(GridStrategy {
            points,
            pairs,
            n: self.n,
        }))
    }
}

impl PairStrategy for GridStrategy {
    fn datasets(&self) -> Vec<String> {
        self.pairs
            .iter()
            .map(|&(c, r)| {
                crate::with_n(
                    format!("grid_{}_vs_{}", self.points[c], self.points[r]),
                    self.n,
                )
            })
            .collect()
    }

    fn min_samples(&self) -> usize {
        crate::min_samples(self.n)
    }

    fn select(&self, group: &ScoredGroup, out: &mut Vec<Selection>) -> Result<(), PluginError> {
        let Some(view) = crate::View::new(group, self.n) else {
            return Err(PluginError::Input("empty group".into()));
        };
        let at: Vec<usize> = self.points.iter().map(|&p| view.point(p)).collect();
        out.extend(self.pairs.iter().map(|&(c, r)| view.checked(at[c], at[r])));
        Ok(())
    }

    fn responses(&self) -> Option<Vec<[String; 2]>> {
        let name = |p: usize| crate::response_name(&self.points[p].to_string(), self.n);
        Some(
            self.pairs
                .iter()
                .map(|&(c, r)| [name(c), name(r)])
                .collect(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;
    use sweetspot_core::SkipReason;

    #[test]
    fn default_grid_has_the_papers_21_datasets() {
        let g = Grid::default().build(&BuildContext::new(".")).unwrap();
        let names = g.datasets();
        assert_eq!(names.len(), 21);
        assert_eq!(names[0], "grid_max_vs_min");
        assert!(names.contains(&"grid_+2_vs_-2".to_string()));
        assert!(names.contains(&"grid_max_vs_-2".to_string()));
        assert!(names.contains(&"grid_0_vs_min".to_string()));
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), 21);
    }

    #[test]
    fn selections_match_the_points() {
        // rewards 0..=9: mu 4.5, sigma 2.872; points: min 0, -2 -> 0, -1 -> 2, 0 -> 4 (tie 4/5
        // goes to the lower index), +1 -> 7, +2 -> 9, max 9.
        let g = Grid::default().build(&BuildContext::new(".")).unwrap();
        let r: Vec<f64> = (0..10).map(f64::from).collect();
        let mut out = Vec::new();
        g.select(&group(&r), &mut out).unwrap();
        let by_name: std::collections::HashMap<_, _> =
            g.datasets().into_iter().zip(out.iter().cloned()).collect();
        assert_eq!(
            by_name["grid_max_vs_min"],
            Selection::Pair {
                chosen: 9,
                rejected: 0
            }
        );
        assert_eq!(
            by_name["grid_+1_vs_-1"],
            Selection::Pair {
                chosen: 7,
                rejected: 2
            }
        );
        assert_eq!(
            by_name["grid_0_vs_-1"],
            Selection::Pair {
                chosen: 4,
                rejected: 2
            }
        );
        // +2 and max are the same sample (9); -2 and min too (0).
        assert_eq!(
            by_name["grid_max_vs_+2"],
            Selection::Skip(SkipReason::SAME_SAMPLE)
        );
        assert_eq!(
            by_name["grid_-2_vs_min"],
            Selection::Skip(SkipReason::SAME_SAMPLE)
        );
    }

    #[test]
    fn sigma_zero_skips_every_dataset() {
        let g = Grid::default().build(&BuildContext::new(".")).unwrap();
        let mut out = Vec::new();
        g.select(&group(&[-1.0, -1.0]), &mut out).unwrap();
        assert_eq!(out.len(), 21);
        assert!(
            out.iter()
                .all(|s| *s == Selection::Skip(SkipReason::SIGMA_ZERO))
        );
    }

    #[test]
    fn duplicate_points_are_an_error() {
        let g = Grid {
            points: vec![Point::Min, Point::Sigma(1.0), Point::Sigma(1.0)],
            n: None,
        };
        assert!(g.build(&BuildContext::new(".")).is_err());
    }
}
