//! Whole numbers read exactly from their JSON text: `n` is the value the client wrote, never a float
//! that happens to round to it (`1000000.0000000001` and `1e-400` are not whole; `-0` is negative).
//! A value that is exactly whole is whole however it is written (`10`, `10.0`, `1e3`): JSON, and the
//! JSON Schema `integer` of the OpenAPI document, do not tell them apart.

use serde_json::value::RawValue;

/// Why a JSON value is not a whole number a field accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberError {
    /// Not a number at all.
    NotANumber,
    /// Negative (`-0` included).
    Negative,
    /// Not a whole value (`2.5`, `1e-400`): a fraction that is not zero.
    NotWhole,
    /// More than the field allows (or than 64 bits hold).
    TooLarge,
}

impl NumberError {
    /// A sentence about field `name`, for an error message.
    pub fn describe(&self, name: &str, max: u64) -> String {
        match self {
            Self::NotANumber => format!("\"{name}\" must be a number, such as 150000"),
            Self::Negative => format!("\"{name}\" must not be negative"),
            Self::NotWhole => format!("\"{name}\" must be a whole number, such as 150000"),
            Self::TooLarge => format!("\"{name}\" must be at most {max}"),
        }
    }
}

/// Reads a whole number of at most `max` from a JSON value's text, exactly: no sign; a fraction or an
/// exponent only where the value stays whole (`10.0`, `1.5e1`, `1e3`). Leading zeros cannot occur in
/// valid JSON; a bare-number frame ("007") is checked by [`parse_digits`] instead.
pub fn whole_number(raw: &RawValue, max: u64) -> Result<u64, NumberError> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'-') => {
            // "-0" is as negative as anything else here, and "-1.5" too.
            return if text[1..].bytes().next().is_some_and(|b| b.is_ascii_digit()) {
                Err(NumberError::Negative)
            } else {
                Err(NumberError::NotANumber)
            };
        }
        Some(b) if b.is_ascii_digit() => {}
        _ => return Err(NumberError::NotANumber),
    }
    // JSON's grammar: digits, then optionally `.digits`, then optionally `e[+-]digits`.
    let (mantissa, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], Some(&text[at + 1..])),
        None => (text, None),
    };
    let (whole, fraction) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if exponent.is_none() && fraction.is_empty() {
        return parse_digits(whole, max);
    }
    // The value is `digits` × 10^`shift`, `digits` without leading zeros.
    let digits = format!("{whole}{fraction}");
    let digits = digits.trim_start_matches('0');
    if digits.is_empty() {
        return parse_digits("0", max);
    }
    let exponent: i64 = match exponent {
        None => 0,
        // An exponent beyond i64 (on a non-zero value) is far beyond 64 bits or far below 1.
        Some(e) => match e.parse::<i64>() {
            Ok(e) => e,
            Err(_) if e.starts_with('-') => return Err(NumberError::NotWhole),
            Err(_) => return Err(NumberError::TooLarge),
        },
    };
    let shift = exponent.saturating_sub(fraction.len() as i64);
    if shift < 0 {
        // Whole only if the last -shift digits are zeros.
        let cut = usize::try_from(shift.unsigned_abs()).unwrap_or(usize::MAX);
        if cut >= digits.len() || !digits[digits.len() - cut..].bytes().all(|b| b == b'0') {
            return Err(NumberError::NotWhole);
        }
        return parse_digits(&digits[..digits.len() - cut], max);
    }
    // u64 holds 20 digits at most.
    if digits.len() as i64 + shift > 20 {
        return Err(NumberError::TooLarge);
    }
    let zeros = "0".repeat(usize::try_from(shift).unwrap_or(usize::MAX));
    parse_digits(&format!("{digits}{zeros}"), max)
}

/// Reads a string of ASCII digits as a number of at most `max`.
pub fn parse_digits(digits: &str, max: u64) -> Result<u64, NumberError> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotWhole);
    }
    match digits.parse::<u64>() {
        Ok(n) if n <= max => Ok(n),
        _ => Err(NumberError::TooLarge),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<u64, NumberError> {
        let raw: Box<RawValue> = serde_json::from_str(text).unwrap();
        whole_number(&raw, 1_000_000)
    }

    #[test]
    fn only_plain_digits_are_whole_numbers() {
        assert_eq!(read("0"), Ok(0));
        assert_eq!(read("1000000"), Ok(1_000_000));
        assert_eq!(read("1000001"), Err(NumberError::TooLarge));
        assert_eq!(read(&"9".repeat(500)), Err(NumberError::TooLarge));
        for not_whole in [
            "1000000.0000000001",
            "1e-400",
            "2.5",
            "0.05e1",
            "1.0000001e6",
            "1e-9223372036854775809",
        ] {
            assert_eq!(read(not_whole), Err(NumberError::NotWhole), "{not_whole}");
        }
        for (whole, n) in [
            ("10.0", 10),
            ("1e3", 1000),
            ("1E2", 100),
            ("1.5e1", 15),
            ("1500e-2", 15),
            ("0.0", 0),
            ("0e999999999999999999999", 0),
            ("1000000.000", 1_000_000),
        ] {
            assert_eq!(read(whole), Ok(n), "{whole}");
        }
        for too_large in ["1e309", "1.0000001e7", "1e99999999999999999999", "2e19"] {
            assert_eq!(read(too_large), Err(NumberError::TooLarge), "{too_large}");
        }
        for negative in ["-0", "-1", "-0.0", "-1e3"] {
            assert_eq!(read(negative), Err(NumberError::Negative), "{negative}");
        }
        for other in ["\"5\"", "null", "[1]", "{}", "true"] {
            assert_eq!(read(other), Err(NumberError::NotANumber), "{other}");
        }
    }

    #[test]
    fn messages_name_the_field() {
        for error in [
            NumberError::NotANumber,
            NumberError::Negative,
            NumberError::NotWhole,
            NumberError::TooLarge,
        ] {
            assert!(error.describe("n", 5).contains("\"n\""), "{error:?}");
        }
        assert!(NumberError::TooLarge.describe("n", 5).contains('5'));
    }
}
