//! Checked numbers for every section: each error names its key and the allowed range.

use super::ConfigError;

pub(super) fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        key: key.to_owned(),
        message: message.into(),
    }
}

pub(super) fn int_in(
    key: &str,
    value: Option<i64>,
    default: u64,
    min: u64,
    max: u64,
) -> Result<u64, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if v >= 0 && (min..=max).contains(&v.unsigned_abs()) => Ok(v.unsigned_abs()),
        Some(v) => Err(invalid(
            key,
            format!("expected an integer from {min} to {max}, got {v}"),
        )),
    }
}

/// A support threshold: 1 to what a support sketch can count.
pub(super) fn support_in(key: &str, value: Option<i64>) -> Result<u32, ConfigError> {
    let max = crate::support::MAX_SUPPORT;
    narrow(key, int_in(key, value, 1, 1, max.into())?)
}

pub(super) fn narrow<T: TryFrom<u64>>(key: &str, v: u64) -> Result<T, ConfigError> {
    T::try_from(v).map_err(|_| invalid(key, format!("{v} is out of range")))
}
