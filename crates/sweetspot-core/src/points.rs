//! Reward points and the selection rule.
//!
//! Per prompt, mu = mean of the rewards and sigma = their population standard deviation. Point
//! `min` is the lowest reward, `max` the highest, and a real number k is the sample whose reward is
//! nearest to mu + k * sigma. Every tie goes to the lowest sample index.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::stats::RewardStats;

/// The paper's seven points: min, mu + k sigma for k = -2, -1, 0, 1, 2, and max (the grid's
/// default, 21 chosen/rejected pairs).
pub const PAPER_POINTS: [Point; 7] = [
    Point::Min,
    Point::Sigma(-2.0),
    Point::Sigma(-1.0),
    Point::Sigma(0.0),
    Point::Sigma(1.0),
    Point::Sigma(2.0),
    Point::Max,
];

/// A point on a group's reward distribution.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Point {
    /// The lowest reward.
    Min,
    /// The highest reward.
    Max,
    /// The reward nearest to mu + k * sigma.
    Sigma(f64),
}

impl Point {
    /// A sort key: `min` below every k, `max` above every k.
    pub fn order_key(&self) -> f64 {
        match self {
            Self::Min => f64::NEG_INFINITY,
            Self::Max => f64::INFINITY,
            Self::Sigma(k) => *k,
        }
    }

    /// A label safe in file names: `min`, `max`, `0`, `+2`, `-2`, `+3.5`.
    pub fn label(&self) -> String {
        self.to_string()
    }

    /// The position (in `rewards`, which is ordered by sample index) of the sample at this point.
    /// `None` when `rewards` is empty.
    pub fn select(&self, rewards: &[f64], stats: &RewardStats) -> Option<usize> {
        match self {
            Self::Min => argbest(rewards, |r| -r),
            Self::Max => argbest(rewards, |r| r),
            Self::Sigma(k) => {
                let target = stats.mean + k * stats.std;
                argbest(rewards, |r| -(r - target).abs())
            }
        }
    }
}

/// The first position with the highest `score`: ties go to the lowest position.
fn argbest(rewards: &[f64], score: impl Fn(f64) -> f64) -> Option<usize> {
    let mut best: Option<(usize, f64)> = None;
    for (i, &r) in rewards.iter().enumerate() {
        let s = score(r);
        match best {
            Some((_, b)) if s <= b => {}
            _ => best = Some((i, s)),
        }
    }
    best.map(|(i, _)| i)
}

impl fmt::Display for Point {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Min => f.write_str("min"),
            Self::Max => f.write_str("max"),
            Self::Sigma(k) if *k == 0.0 => f.write_str("0"),
            Self::Sigma(k) if *k > 0.0 => write!(f, "+{k}"),
            Self::Sigma(k) => write!(f, "{k}"),
        }
    }
}

/// The error for a point that is neither `min`, `max` nor a finite number.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a reward point: use `min`, `max` or a finite number such as 2, -2 or 3.5")]
pub struct ParsePointError(pub String);

impl FromStr for Point {
    type Err = ParsePointError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "min" => return Ok(Self::Min),
            "max" => return Ok(Self::Max),
            _ => {}
        }
        let t = t.strip_suffix("sd").unwrap_or(t);
        match t.parse::<f64>() {
            Ok(k) if k.is_finite() => Ok(Self::Sigma(k)),
            _ => Err(ParsePointError(s.to_string())),
        }
    }
}

impl Serialize for Point {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Min => serializer.serialize_str("min"),
            Self::Max => serializer.serialize_str("max"),
            Self::Sigma(k) => serializer.serialize_f64(*k),
        }
    }
}

impl<'de> Deserialize<'de> for Point {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Point;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a reward point: \"min\", \"max\" or a number such as 2 or -2")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Point, E> {
                v.parse().map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Point, E> {
                if v.is_finite() {
                    Ok(Point::Sigma(v))
                } else {
                    Err(E::custom(ParsePointError(v.to_string())))
                }
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Point, E> {
                Ok(Point::Sigma(v as f64))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Point, E> {
                Ok(Point::Sigma(v as f64))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pick(point: Point, rewards: &[f64]) -> usize {
        let stats = RewardStats::from_rewards(rewards.iter().copied()).unwrap();
        point.select(rewards, &stats).unwrap()
    }

    #[test]
    fn min_and_max_ties_go_to_lowest_index() {
        let r = [3.0, 1.0, 5.0, 1.0, 5.0];
        assert_eq!(pick(Point::Min, &r), 1);
        assert_eq!(pick(Point::Max, &r), 2);
    }

    #[test]
    fn nearest_to_mu_plus_k_sigma() {
        // mu = 2.5, sigma = sqrt(1.25) = 1.118...; mu + 1 sigma = 3.618 -> reward 4 (index 3);
        // mu - 1 sigma = 1.382 -> reward 1 (index 0).
        let r = [1.0, 2.0, 3.0, 4.0];
        assert_eq!(pick(Point::Sigma(1.0), &r), 3);
        assert_eq!(pick(Point::Sigma(-1.0), &r), 0);
        // mu = 2.5 is equally far from 2 (index 1) and 3 (index 2): the tie goes to index 1.
        assert_eq!(pick(Point::Sigma(0.0), &r), 1);
    }

    #[test]
    fn tie_at_k_goes_to_lowest_index_even_when_higher_reward() {
        // mu = 2, sigma = 1; target for k = 0 is 2; rewards 3 (index 0) and 1 (index 1) tie.
        let r = [3.0, 1.0];
        assert_eq!(pick(Point::Sigma(0.0), &r), 0);
    }

    #[test]
    fn negative_rewards() {
        // mu = -3, sigma = sqrt(2/3*... ) computed: rewards -4, -3, -2 -> sigma = sqrt(2/3) = 0.816
        // mu + 1 sigma = -2.18 -> -2 (index 2); mu - 1 sigma = -3.82 -> -4 (index 0).
        let r = [-4.0, -3.0, -2.0];
        assert_eq!(pick(Point::Sigma(1.0), &r), 2);
        assert_eq!(pick(Point::Sigma(-1.0), &r), 0);
        assert_eq!(pick(Point::Min, &r), 0);
        assert_eq!(pick(Point::Max, &r), 2);
    }

    #[test]
    fn k_beyond_the_data_is_the_extreme() {
        // mu + 4 sigma lies above every reward: the nearest is the max (first of ties).
        let r = [0.0, 10.0, 1.0, 10.0, 2.0];
        assert_eq!(pick(Point::Sigma(4.0), &r), 1);
        assert_eq!(pick(Point::Sigma(-4.0), &r), 0);
    }

    #[test]
    fn parse_and_display() {
        assert_eq!("min".parse::<Point>().unwrap(), Point::Min);
        assert_eq!("MAX".parse::<Point>().unwrap(), Point::Max);
        assert_eq!("-2".parse::<Point>().unwrap(), Point::Sigma(-2.0));
        assert_eq!("+3.5".parse::<Point>().unwrap(), Point::Sigma(3.5));
        assert!("nan".parse::<Point>().is_err());
        assert!("middle".parse::<Point>().is_err());
        assert_eq!(Point::Sigma(2.0).to_string(), "+2");
        assert_eq!(Point::Sigma(-2.0).to_string(), "-2");
        assert_eq!(Point::Sigma(0.0).to_string(), "0");
        assert_eq!(Point::Sigma(3.5).to_string(), "+3.5");
    }
}
