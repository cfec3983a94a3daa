//! Whole numbers read exactly from their JSON text: `n` must be what the client wrote, never a float
//! that happens to round to it (`1000000.0000000001`, `1e-400`, `-0`).

use serde_json::value::RawValue;

/// Why a JSON value is not a whole number a field accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NumberError {
    /// Not a number at all.
    NotANumber,
    /// Negative (`-0` included).
    Negative,
    /// A fraction or an exponent (`2.5`, `10.0`, `1e3`): only plain digits are taken.
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
            Self::NotWhole => format!(
                "\"{name}\" must be a whole number written with digits only, such as 150000 (no fraction or exponent)"
            ),
            Self::TooLarge => format!("\"{name}\" must be at most {max}"),
        }
    }
}

/// Reads a whole number of at most `max` from a JSON value's text: digits only, no sign, fraction or
/// exponent. Leading zeros cannot occur in valid JSON; a bare-number frame ("007") is checked by
/// [`parse_digits`] instead.
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
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(NumberError::NotWhole);
    }
    parse_digits(text, max)
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
            "1e3",
            "10.0",
            "1000000.0000000001",
            "1e-400",
            "1e309",
            "2.5",
            "1E2",
        ] {
            assert_eq!(read(not_whole), Err(NumberError::NotWhole), "{not_whole}");
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
