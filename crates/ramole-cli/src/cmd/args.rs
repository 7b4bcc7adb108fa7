//! Value parsers for numeric arguments that clap's integer ranges do not cover (floats).

/// A finite number > 0.
pub fn positive_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() && v > 0.0 { Ok(v) } else { Err(format!("`{s}` must be a finite number greater than 0")) }
}

/// A finite number ≥ 0.
pub fn non_negative_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(format!("`{s}` must be a finite number of at least 0")) }
}

/// A count in `min..=max`, parsed as a `usize` (clap's ranges cover `u64`, not `usize`): the error
/// names the range, e.g. `0 is not in 1..=256`.
pub fn usize_in(min: u64, max: u64) -> impl clap::builder::TypedValueParser<Value = usize> {
    use clap::builder::TypedValueParser;
    clap::value_parser!(u64).range(min..=max).map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// A finite `f32` ≥ 0 (a sampling temperature).
pub fn non_negative_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v.is_finite() && v >= 0.0 { Ok(v) } else { Err(format!("`{s}` must be a finite number of at least 0")) }
}

/// An `f32` in (0, 1] (a nucleus mass).
pub fn unit_f32(s: &str) -> Result<f32, String> {
    let v: f32 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v > 0.0 && v <= 1.0 { Ok(v) } else { Err(format!("`{s}` must be in (0, 1]")) }
}

/// An `f64` in (0, 1), both ends excluded (a fraction that leaves something on each side).
pub fn open_fraction_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if v > 0.0 && v < 1.0 { Ok(v) } else { Err(format!("`{s}` must be in (0, 1), both ends excluded")) }
}

/// An `f64` in [0, 1) (a share that leaves something for the rest).
pub fn unit_interval_f64(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if (0.0..1.0).contains(&v) { Ok(v) } else { Err(format!("`{s}` must be in [0, 1)")) }
}
