//! Sizes as users type them (`10G`, `512K`, `1048576`) and as berth prints them.
//!
//! Suffixes are binary, as `qemu-img` reads them: `K` = 1024, `M` = 1024², and so on up to `E`.
//! A `B` suffix or none means bytes. Decimal fractions are accepted with a suffix (`1.5G`) as long
//! as the result is a whole number of bytes.

use thiserror::Error;

/// Why a size string was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// The string was empty.
    #[error("size is empty")]
    Empty,
    /// Not a number with an optional K/M/G/T/P/E suffix.
    #[error("invalid size {0:?}: expected bytes or a number with a K, M, G, T, P or E suffix")]
    Invalid(String),
    /// The value does not fit in 64 bits.
    #[error("size {0:?} is too large")]
    TooLarge(String),
    /// A fraction that does not land on a whole byte.
    #[error("size {0:?} is not a whole number of bytes")]
    Fractional(String),
}

/// Parse a size such as `10G`, `64k`, `1.5M` or `4096` into bytes.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let shift = match suffix.trim() {
        "" | "b" | "B" => 0,
        "k" | "K" | "KiB" | "kB" | "KB" => 10,
        "m" | "M" | "MiB" | "MB" => 20,
        "g" | "G" | "GiB" | "GB" => 30,
        "t" | "T" | "TiB" | "TB" => 40,
        "p" | "P" | "PiB" | "PB" => 50,
        "e" | "E" | "EiB" | "EB" => 60,
        _ => return Err(SizeError::Invalid(text.to_string())),
    };
    if num.is_empty() || num.matches('.').count() > 1 || num.starts_with('.') || num.ends_with('.')
    {
        return Err(SizeError::Invalid(text.to_string()));
    }
    let (int_part, frac_part) = num.split_once('.').unwrap_or((num, ""));
    let int: u64 = int_part
        .parse()
        .map_err(|_| SizeError::TooLarge(text.to_string()))?;
    let whole = int
        .checked_mul(1u64 << shift)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))?;
    if frac_part.is_empty() {
        return Ok(whole);
    }
    if frac_part.len() > 18 {
        return Err(SizeError::Invalid(text.to_string()));
    }
    // fraction = frac / 10^digits; bytes = fraction * 2^shift, must be whole.
    let frac: u128 = frac_part
        .parse()
        .map_err(|_| SizeError::Invalid(text.to_string()))?;
    let denom = 10u128.pow(frac_part.len() as u32);
    let scaled = frac * (1u128 << shift);
    if scaled % denom != 0 {
        return Err(SizeError::Fractional(text.to_string()));
    }
    let extra = u64::try_from(scaled / denom).map_err(|_| SizeError::TooLarge(text.to_string()))?;
    whole
        .checked_add(extra)
        .ok_or_else(|| SizeError::TooLarge(text.to_string()))
}

/// Format bytes as qemu-img does in its human output (`10 GiB`, `192 KiB`, `1.5 MiB`).
pub fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_plain_and_suffixed_sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("64k"), Ok(65536));
        assert_eq!(parse_size("64K"), Ok(65536));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        assert_eq!(parse_size("512B"), Ok(512));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
    }

    #[test]
    fn refuses_bad_sizes() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("ten"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("10X"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("-1"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("1.2.3G"), Err(SizeError::Invalid(_))));
        assert!(matches!(parse_size("16E"), Err(SizeError::TooLarge(_))));
        assert!(matches!(
            parse_size("99999999999999999999"),
            Err(SizeError::TooLarge(_))
        ));
        assert!(matches!(parse_size("1.1"), Err(SizeError::Fractional(_))));
    }

    #[test]
    fn human_sizes_read_like_qemu_img() {
        assert_eq!(human_size(512), "512 B");
        assert_eq!(human_size(196608), "192 KiB");
        assert_eq!(human_size(10 << 30), "10 GiB");
        assert_eq!(human_size(3 << 19), "1.5 MiB");
    }
}
