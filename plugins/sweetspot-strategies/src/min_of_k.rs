use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sweetspot_core::{
    BuildContext, PairStrategy, PairStrategyConfig, PluginError, Point, ScoredGroup, Selection,
};

/// Which k samples form the rejected pool.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subset {
    /// The k lowest sample indices: the paper's nested protocol, where the first k draws stay the
    /// rejected pool as n grows.
    #[default]
    First,
    /// k samples drawn without replacement, seeded by the seed and the prompt id only.
    Random,
}

/// `max-of-n-min-of-k`: chosen = the highest reward over all n samples, rejected = the lowest
/// reward over k of them (default 5). The paper's cheap proxy for the mu - 2 sigma point, which
/// keeps improving as n grows. A group with fewer than k samples uses all of them as the pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaxOfNMinOfK {
    /// Size of the rejected pool.
    #[serde(default = "default_k")]
    pub k: usize,
    /// How the pool is chosen.
    #[serde(default)]
    pub subset: Subset,
    /// Seed for `subset = "random"`; the run's seed when absent.
    pub seed: Option<u64>,
    /// Use only the first n samples of each group.
    pub n: Option<usize>,
}

fn default_k() -> usize {
    5
}

impl Default for MaxOfNMinOfK {
    fn default() -> Self {
        Self {
            k: default_k(),
            subset: Subset::First,
            seed: None,
            n: None,
        }
    }
}

#[derive(Debug)]
struct Built {
    cfg: MaxOfNMinOfK,
    seed: u64,
}

#[sweetspot_core::plugin(
    name = "max-of-n-min-of-k",
    description = "chosen = max over all n, rejected = min over k samples (default 5; the paper's cheap proxy)",
    example = "type = \"max-of-n-min-of-k\""
)]
impl PairStrategyConfig for MaxOfNMinOfK {
    fn own_n(&self) -> Option<usize> {
        self.n
    }

    fn build(&self, ctx: &BuildContext) -> Result<Box<dyn PairStrategy>, PluginError> {
        crate::check_n("max-of-n-min-of-k", self.n)?;
        if self.k == 0 {
            return Err(PluginError::config(
                "max-of-n-min-of-k",
                "`k` must be at least 1",
            ));
        }
        Ok(Box::new(Built {
            cfg: self.clone(),
            seed: self.seed.unwrap_or(ctx.seed),
        }))
    }
}

/// The random pool for one prompt: depends on the seed and the prompt id only.
fn random_pool(seed: u64, prompt_id: &str, len: usize, k: usize) -> Vec<usize> {
    let mut hasher = Sha256::new();
    hasher.update(b"sweetspot/max-of-n-min-of-k/v1");
    hasher.update(seed.to_le_bytes());
    hasher.update(prompt_id.as_bytes());
    let digest: [u8; 32] = hasher.finalize().into();
    let mut rng = rand_chacha::ChaCha8Rng::from_seed(digest);
    let mut pool = rand::seq::index::sample(&mut rng, len, k.min(len)).into_vec();
    pool.sort_unstable();
    pool
}

impl PairStrategy for Built {
    fn datasets(&self) -> Vec<String> {
        let mut name = format!("max-of-n-min-of-{}", self.cfg.k);
        if self.cfg.subset == Subset::Random {
            name.push_str("-random");
        }
        vec![crate::with_n(name, self.cfg.n)]
    }

    fn min_samples(&self) -> usize {
        crate::min_samples(self.cfg.n)
    }

    fn select(&self, group: &ScoredGroup, out: &mut Vec<Selection>) -> Result<(), PluginError> {
        let Some(view) = crate::View::new(group, self.cfg.n) else {
            return Err(PluginError::Input("empty group".into()));
        };
        let len = view.samples.len();
        let chosen = view.point(Point::Max);
        let pool: Vec<usize> = match self.cfg.subset {
            Subset::First => (0..self.cfg.k.min(len)).collect(),
            Subset::Random => random_pool(self.seed, &group.prompt.id, len, self.cfg.k),
        };
        // Lowest reward in the pool; ties to the lowest sample index (the pool is sorted).
        let mut rejected = pool[0];
        for &i in &pool[1..] {
            if view.rewards[i] < view.rewards[rejected] {
                rejected = i;
            }
        }
        out.push(view.checked(chosen, rejected));
        Ok(())
    }

    fn responses(&self) -> Option<Vec<[String; 2]>> {
        let pool = match self.cfg.subset {
            Subset::First => format!("min-of-first-{}", self.cfg.k),
            Subset::Random => format!("min-of-random-{}-seed{}", self.cfg.k, self.seed),
        };
        Some(vec![[
            crate::response_name("max", self.cfg.n),
            crate::response_name(&pool, self.cfg.n),
        ]])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::group;
    use sweetspot_core::SkipReason;

    fn run(cfg: MaxOfNMinOfK, rewards: &[f64]) -> Selection {
        let s = cfg.build(&BuildContext::new(".")).unwrap();
        let mut out = Vec::new();
        s.select(&group(rewards), &mut out).unwrap();
        out.remove(0)
    }

    #[test]
    fn rejected_from_first_k_chosen_from_all() {
        // The global min (idx 6, -9) is outside the first 5; the pool's min is idx 3 (0.1).
        let r = [0.5, 0.7, 0.2, 0.1, 0.4, 0.9, -9.0, 1.5];
        let sel = run(MaxOfNMinOfK::default(), &r);
        assert_eq!(
            sel,
            Selection::Pair {
                chosen: 7,
                rejected: 3
            }
        );
    }

    #[test]
    fn fewer_samples_than_k_uses_them_all() {
        // n = 3 < k = 5: the pool is every sample, which is max-min.
        let sel = run(MaxOfNMinOfK::default(), &[0.5, 0.1, 0.9]);
        assert_eq!(
            sel,
            Selection::Pair {
                chosen: 2,
                rejected: 1
            }
        );
        let cfg = MaxOfNMinOfK {
            n: Some(3),
            ..Default::default()
        };
        let sel = run(cfg, &[0.5, 0.1, 0.9, -1.0, 2.0]);
        assert_eq!(
            sel,
            Selection::Pair {
                chosen: 2,
                rejected: 1
            }
        );
    }

    #[test]
    fn chosen_in_the_pool_is_the_same_sample_when_the_pool_is_flat_above() {
        // k = 1: the pool is sample 0, which is also the max.
        let cfg = MaxOfNMinOfK {
            k: 1,
            ..Default::default()
        };
        assert_eq!(
            run(cfg, &[3.0, 1.0, 2.0]),
            Selection::Skip(SkipReason::SAME_SAMPLE)
        );
    }

    #[test]
    fn equal_rewards_on_different_samples_are_not_higher() {
        // max is idx 0 (5.0, first of the tie); the random pool of 1 sample must be idx 1 (5.0)
        // or idx 2 (1.0): find a seed that draws idx 1 and check the skip.
        let r = [5.0, 5.0, 1.0];
        let seed = (0..1000u64)
            .find(|&s| random_pool(s, &group(&r).prompt.id, 3, 1) == vec![1])
            .unwrap();
        let cfg = MaxOfNMinOfK {
            k: 1,
            subset: Subset::Random,
            seed: Some(seed),
            n: None,
        };
        assert_eq!(run(cfg, &r), Selection::Skip(SkipReason::CHOSEN_NOT_HIGHER));
    }

    #[test]
    fn random_pool_depends_on_seed_and_prompt_only() {
        let a = random_pool(7, "prompt-a", 200, 5);
        assert_eq!(a, random_pool(7, "prompt-a", 200, 5));
        assert_eq!(a.len(), 5);
        assert_ne!(a, random_pool(8, "prompt-a", 200, 5));
        assert_ne!(a, random_pool(7, "prompt-b", 200, 5));
    }

    #[test]
    fn sigma_zero() {
        assert_eq!(
            run(MaxOfNMinOfK::default(), &[1.0; 6]),
            Selection::Skip(SkipReason::SIGMA_ZERO)
        );
    }
}
