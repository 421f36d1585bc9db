use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, PairStrategy, PairStrategyConfig, PluginError, Point, ScoredGroup, Selection,
};

/// `sigma`: chosen and rejected each at any reward point (`min`, `max`, or mu + k * sigma for a
/// real k). The paper's best: chosen = `max`, rejected = -2.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sigma {
    /// The chosen sample's point.
    pub chosen: Point,
    /// The rejected sample's point.
    pub rejected: Point,
    /// Use only the first n samples of each group.
    pub n: Option<usize>,
}

#[sweetspot_core::plugin(
    name = "sigma",
    description = "chosen and rejected at reward points min, max or mu + k*sigma (paper: max vs -2)",
    example = "type = \"sigma\"\nchosen = \"max\"\nrejected = -2"
)]
impl PairStrategyConfig for Sigma {
    fn own_n(&self) -> Option<usize> {
        self.n
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError> {
        crate::check_n("sigma", self.n)?;
        if self.chosen.order_key() <= self.rejected.order_key() {
            return Err(PluginError::config(
                "sigma",
                format!(
                    "`chosen` ({}) must be a higher point than `rejected` ({})",
                    self.chosen, self.rejected
                ),
            ));
        }
        Ok(Box::new(self.clone()))
    }
}

impl PairStrategy for Sigma {
    fn datasets(&self) -> Vec<String> {
        vec![crate::with_n(
            format!("sigma_{}_vs_{}", self.chosen, self.rejected),
            self.n,
        )]
    }

    fn min_samples(&self) -> usize {
        crate::min_samples(self.n)
    }

    fn select(&self, group: &ScoredGroup, out: &mut Vec<Selection>) -> Result<(), PluginError> {
        let Some(view) = crate::View::new(group, self.n) else {
            return Err(PluginError::Input("empty group".into()));
        };
        out.push(view.checked(view.point(self.chosen), view.point(self.rejected)));
        Ok(())
    }

    fn responses(&self) -> Option<Vec<[String; 2]>> {
        let name = |p: &Point| crate::response_name(&p.to_string(), self.n);
        Some(vec![[name(&self.chosen), name(&self.rejected)]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;
    use sweetspot_core::SkipReason;

    fn sigma(chosen: Point, rejected: Point) -> Sigma {
        Sigma {
            chosen,
            rejected,
            n: None,
        }
    }

    fn run(s: &Sigma, rewards: &[f64]) -> Selection {
        let mut out = Vec::new();
        s.select(&group(rewards), &mut out).unwrap();
        out.remove(0)
    }

    #[test]
    fn two_sigma_points_hand_computed() {
        // rewards 0..=9: mu = 4.5, sigma = sqrt(8.25) = 2.8723; mu + 2 sigma = 10.24 -> 9 (idx 9);
        // mu - 2 sigma = -1.24 -> 0 (idx 0); mu + 1 sigma = 7.37 -> 7; mu - 1 sigma = 1.63 -> 2.
        let r: Vec<f64> = (0..10).map(f64::from).collect();
        let s = sigma(Point::Sigma(2.0), Point::Sigma(-2.0));
        assert_eq!(
            run(&s, &r),
            Selection::Pair {
                chosen: 9,
                rejected: 0
            }
        );
        let s = sigma(Point::Sigma(1.0), Point::Sigma(-1.0));
        assert_eq!(
            run(&s, &r),
            Selection::Pair {
                chosen: 7,
                rejected: 2
            }
        );
        assert_eq!(s.datasets(), vec!["sigma_+1_vs_-1".to_string()]);
    }

    #[test]
    fn same_sample_is_skipped() {
        // Three samples: mu = 1/3*(0+0+3) = 1, sigma = sqrt(2) = 1.414; mu + 1 sigma = 2.41 -> 3
        // (idx 2); max -> idx 2 too.
        let s = sigma(Point::Max, Point::Sigma(1.0));
        assert_eq!(
            run(&s, &[0.0, 0.0, 3.0]),
            Selection::Skip(SkipReason::SAME_SAMPLE)
        );
    }

    #[test]
    fn chosen_not_strictly_higher_is_skipped() {
        // For `sigma` points a higher point never picks a lower reward, so the rule is pinned on
        // the shared check: two different samples with equal rewards, and a lower chosen reward.
        let sel = Selection::checked(&[2.0, 2.0, 8.0], 2.83, 1, 0);
        assert_eq!(sel, Selection::Skip(SkipReason::CHOSEN_NOT_HIGHER));
        let sel = Selection::checked(&[2.0, 1.0, 8.0], 2.83, 1, 0);
        assert_eq!(sel, Selection::Skip(SkipReason::CHOSEN_NOT_HIGHER));
        let s = sigma(Point::Max, Point::Min);
        assert_eq!(
            run(&s, &[2.0, 1.0, 8.0]),
            Selection::Pair {
                chosen: 2,
                rejected: 1
            }
        );
    }

    #[test]
    fn k_beyond_the_data() {
        // k = 4 lies beyond every reward: the nearest is the max; k = -4 the min.
        let s = sigma(Point::Sigma(4.0), Point::Sigma(-4.0));
        assert_eq!(
            run(&s, &[0.3, 0.9, 0.1, 0.5]),
            Selection::Pair {
                chosen: 1,
                rejected: 2
            }
        );
    }

    #[test]
    fn chosen_below_rejected_is_a_config_error() {
        let s = sigma(Point::Sigma(-2.0), Point::Sigma(2.0));
        let err = s.build(&BuildContext::new(".")).err().unwrap();
        assert!(err.to_string().contains("must be a higher point"), "{err}");
    }
}
