//! Masking engine: detectors, column/field rules, strategies, value and stream maskers.

mod spec;

pub use spec::{DetectorSpec, MaskSpec, StrategyName};
