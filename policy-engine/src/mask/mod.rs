//! Masking engine: detectors, column/field rules, strategies, value and stream maskers.
