//! The numbers of a benchmark's runs and the few statistics its tables and charts show.
//!
//! [`Samples`] holds one subject's raw values of one metric, in run order. It refuses NaN and
//! infinities as they arrive, so every statistic after that is a plain number: sorting cannot
//! meet an unordered pair and a chart never gets a bar of height NaN. Quantiles interpolate
//! linearly between the two nearest ranks (the "type 7" rule of R and NumPy's default), so
//! the median of an even count is the mean of the middle two and p25/p75 lie within the range.

use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum StatsError {
    #[error(
        "a sample of {value} is not a finite number: the measurement failed; report that run as \
         not run instead"
    )]
    NotFinite { value: f64 },
}

/// One subject's values of one metric, one per run, in run order; all finite.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(into = "SamplesJson", try_from = "SamplesJson")]
pub struct Samples {
    values: Vec<f64>,
}

/// The statistics of some [`Samples`] (all of them from the same non-empty set).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p25: f64,
    pub p75: f64,
}

impl Samples {
    pub fn new() -> Self {
        Self::default()
    }

    /// Samples of `values`, or the first that is not finite.
    pub fn from_values(values: impl IntoIterator<Item = f64>) -> Result<Self, StatsError> {
        let mut samples = Self::new();
        for value in values {
            samples.push(value)?;
        }
        Ok(samples)
    }

    /// Adds one run's value; NaN and infinities are refused (and not added).
    pub fn push(&mut self, value: f64) -> Result<(), StatsError> {
        if !value.is_finite() {
            return Err(StatsError::NotFinite { value });
        }
        self.values.push(value);
        Ok(())
    }

    /// The values in run order.
    pub fn values(&self) -> &[f64] {
        &self.values
    }

    pub fn len(&self) -> usize {
        self.values.len()
    }

    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    /// The `q`-quantile (`q` in 0..=1, clamped), interpolated between the nearest ranks;
    /// `None` for no samples.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let mut sorted = self.values.clone();
        // total_cmp is a plain order here: every value is finite
        sorted.sort_by(f64::total_cmp);
        quantile_of_sorted(&sorted, q)
    }

    pub fn median(&self) -> Option<f64> {
        self.quantile(0.5)
    }

    pub fn min(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::min)
    }

    pub fn max(&self) -> Option<f64> {
        self.values.iter().copied().reduce(f64::max)
    }

    /// Median, range and quartiles in one sort; `None` for no samples.
    pub fn summary(&self) -> Option<Summary> {
        let mut sorted = self.values.clone();
        sorted.sort_by(f64::total_cmp);
        Some(Summary {
            median: quantile_of_sorted(&sorted, 0.5)?,
            min: *sorted.first()?,
            max: *sorted.last()?,
            p25: quantile_of_sorted(&sorted, 0.25)?,
            p75: quantile_of_sorted(&sorted, 0.75)?,
        })
    }
}

fn quantile_of_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    let last = sorted.len().checked_sub(1)?;
    // NaN reads as 0: the smallest value, like any q below the range
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    let rank = q * last as f64;
    let below = rank.floor() as usize;
    let above = (below + 1).min(last);
    let (lo, hi) = (sorted[below], sorted[above]);
    Some(lo + (hi - lo) * (rank - below as f64))
}

/// How [`Samples`] read in JSON: the raw values and, for a reader's convenience, their
/// statistics (`null` for none). Reading one back checks the values and recomputes the rest.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SamplesJson {
    samples: Vec<f64>,
    median: Option<f64>,
    min: Option<f64>,
    max: Option<f64>,
    p25: Option<f64>,
    p75: Option<f64>,
}

impl From<Samples> for SamplesJson {
    fn from(samples: Samples) -> Self {
        let summary = samples.summary();
        SamplesJson {
            median: summary.map(|s| s.median),
            min: summary.map(|s| s.min),
            max: summary.map(|s| s.max),
            p25: summary.map(|s| s.p25),
            p75: summary.map(|s| s.p75),
            samples: samples.values,
        }
    }
}

impl TryFrom<SamplesJson> for Samples {
    type Error = StatsError;

    fn try_from(json: SamplesJson) -> Result<Self, Self::Error> {
        Samples::from_values(json.samples)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(values: &[f64]) -> Samples {
        Samples::from_values(values.iter().copied()).unwrap()
    }

    #[test]
    fn an_odd_count_has_its_middle_as_median() {
        let s = samples(&[3.0, 1.0, 2.0, 10.0, 4.0]);
        let sum = s.summary().unwrap();
        assert_eq!(
            (sum.median, sum.min, sum.max, sum.p25, sum.p75),
            (3.0, 1.0, 10.0, 2.0, 4.0)
        );
        assert_eq!(s.median(), Some(3.0));
        assert_eq!((s.min(), s.max()), (Some(1.0), Some(10.0)));
        // run order is kept for the raw values
        assert_eq!(s.values(), [3.0, 1.0, 2.0, 10.0, 4.0]);
    }

    #[test]
    fn an_even_count_interpolates() {
        let s = samples(&[4.0, 1.0, 3.0, 2.0]);
        let sum = s.summary().unwrap();
        assert_eq!(sum.median, 2.5);
        assert_eq!((sum.p25, sum.p75), (1.75, 3.25));
        assert_eq!((sum.min, sum.max), (1.0, 4.0));
        assert_eq!(samples(&[2.0, 3.0]).median(), Some(2.5));
    }

    #[test]
    fn one_sample_is_every_statistic() {
        let sum = samples(&[7.5]).summary().unwrap();
        assert_eq!(
            (sum.median, sum.min, sum.max, sum.p25, sum.p75),
            (7.5, 7.5, 7.5, 7.5, 7.5)
        );
    }

    #[test]
    fn no_samples_have_no_statistics() {
        let s = Samples::new();
        assert!(s.is_empty());
        assert_eq!(s.summary(), None);
        assert_eq!((s.median(), s.min(), s.max()), (None, None, None));
        assert_eq!(s.quantile(0.9), None);
    }

    #[test]
    fn quantiles_stay_within_the_range() {
        let s = samples(&[10.0, 20.0, 30.0]);
        assert_eq!(s.quantile(0.0), Some(10.0));
        assert_eq!(s.quantile(1.0), Some(30.0));
        assert_eq!(s.quantile(-3.0), Some(10.0));
        assert_eq!(s.quantile(7.0), Some(30.0));
        assert_eq!(s.quantile(0.75), Some(25.0));
        assert_eq!(s.quantile(f64::NAN), Some(10.0));
    }

    #[test]
    fn non_finite_values_are_refused() {
        let mut s = samples(&[1.0]);
        for bad in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            assert!(matches!(s.push(bad), Err(StatsError::NotFinite { .. })));
        }
        assert_eq!(s.values(), [1.0]);
        assert!(Samples::from_values([1.0, f64::NAN]).is_err());
        s.push(-2.0).unwrap();
        assert_eq!(s.min(), Some(-2.0));
    }

    #[test]
    fn json_carries_raw_values_and_reads_back_checked() {
        let s = samples(&[2.0, 1.0]);
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "samples": [2.0, 1.0], "median": 1.5, "min": 1.0, "max": 2.0,
                "p25": 1.25, "p75": 1.75,
            })
        );
        assert_eq!(serde_json::from_value::<Samples>(json).unwrap(), s);
        let empty = serde_json::to_value(Samples::new()).unwrap();
        assert_eq!(empty["median"], serde_json::Value::Null);
        // stale statistics are recomputed, unknown fields refused
        let stale = serde_json::json!({"samples": [3.0], "median": 9.0, "min": null,
            "max": null, "p25": null, "p75": null});
        assert_eq!(
            serde_json::from_value::<Samples>(stale).unwrap().median(),
            Some(3.0)
        );
        let extra = serde_json::json!({"samples": [], "median": null, "min": null,
            "max": null, "p25": null, "p75": null, "mean": 1.0});
        assert!(serde_json::from_value::<Samples>(extra).is_err());
    }
}
