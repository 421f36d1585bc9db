use serde::{Deserialize, Serialize};
use sweetspot_core::{
    BuildContext, PairStrategy, PairStrategyConfig, PluginError, Point, ScoredGroup, Selection,
};

/// `max-min`: chosen = the highest reward, rejected = the lowest (the conventional baseline).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxMin {
    /// Use only the first n samples of each group.
    pub n: Option<usize>,
}

#[sweetspot_core::plugin(
    name = "max-min",
    description = "chosen = highest reward, rejected = lowest (the conventional baseline)",
    example = "type = \"max-min\""
)]
impl PairStrategyConfig for MaxMin {
    fn own_n(&self) -> Option<usize> {
        self.n
    }

    fn build(&self, _ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError> {
        crate::check_n("max-min", self.n)?;
        Ok(Box::new(self.clone()))
    }
}

impl PairStrategy for MaxMin {
    fn datasets(&self) -> Vec<String> {
        vec![crate::with_n("max-min".into(), self.n)]
    }

    fn min_samples(&self) -> usize {
        crate::min_samples(self.n)
    }

    fn select(&self, group: &ScoredGroup, out: &mut Vec<Selection>) -> Result<(), PluginError> {
        let Some(view) = crate::View::new(group, self.n) else {
            return Err(PluginError::Input("empty group".into()));
        };
        out.push(view.checked(view.point(Point::Max), view.point(Point::Min)));
        Ok(())
    }

    fn responses(&self) -> Option<Vec<[String; 2]>> {
        let name = |p: &str| crate::response_name(p, self.n);
        Some(vec![[name("max"), name("min")]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;
    use sweetspot_core::SkipReason;

    fn run(s: &MaxMin, rewards: &[f64]) -> Selection {
        let mut out = Vec::new();
        s.select(&group(rewards), &mut out).unwrap();
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn picks_max_and_min_with_ties_to_lowest_index() {
        let sel = run(&MaxMin::default(), &[0.5, 0.9, 0.1, 0.9, 0.1]);
        assert_eq!(
            sel,
            Selection::Pair {
                chosen: 1,
                rejected: 2
            }
        );
    }

    #[test]
    fn sigma_zero_is_skipped() {
        let sel = run(&MaxMin::default(), &[0.3, 0.3, 0.3]);
        assert_eq!(sel, Selection::Skip(SkipReason::SIGMA_ZERO));
    }

    #[test]
    fn first_n_only() {
        // The global max (index 3) is outside the first 3.
        let s = MaxMin { n: Some(3) };
        assert_eq!(s.min_samples(), 3);
        assert_eq!(s.datasets(), vec!["max-min_n3".to_string()]);
        let sel = run(&s, &[0.2, 0.5, 0.1, 9.0]);
        assert_eq!(
            sel,
            Selection::Pair {
                chosen: 1,
                rejected: 2
            }
        );
    }

    #[test]
    fn negative_rewards() {
        let sel = run(&MaxMin::default(), &[-3.0, -1.5, -7.25]);
        assert_eq!(
            sel,
            Selection::Pair {
                chosen: 1,
                rejected: 2
            }
        );
    }
}
