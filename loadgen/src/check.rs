//! Checks that a reported n! is plausible (exactly, for small n) without computing it.

/// Why an output is not n!.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OutputError {
    /// The digit count the server gave does not match the output it sent.
    #[error("digits says {digits}, the output has {len}")]
    DigitCount {
        /// What the server claimed.
        digits: u64,
        /// The output's length.
        len: usize,
    },
    /// Empty, or holds something other than decimal digits.
    #[error("the output is not a decimal number")]
    NotDecimal,
    /// A decimal number that cannot be n!.
    #[error("the output is not {n}!")]
    Wrong {
        /// The input.
        n: u64,
    },
}

/// Largest n whose factorial fits a `u128`, so it can be compared digit for digit.
const EXACT_UP_TO: u64 = 34;

/// Checks `output` as n!: digits only, `digits` (when given) equal to its length, exactly n! for small n,
/// and for any n the number of trailing zeros n! has (Legendre: n/5 + n/25 + …), which catches truncated or
/// mixed-up outputs at no cost.
pub fn check_output(n: u64, digits: Option<u64>, output: &str) -> Result<(), OutputError> {
    if let Some(digits) = digits {
        if digits != output.len() as u64 {
            return Err(OutputError::DigitCount {
                digits,
                len: output.len(),
            });
        }
    }
    if output.is_empty() || !output.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OutputError::NotDecimal);
    }
    if n <= EXACT_UP_TO {
        let exact: u128 = (1..=u128::from(n)).product();
        return if output == exact.to_string() {
            Ok(())
        } else {
            Err(OutputError::Wrong { n })
        };
    }
    let zeros = output.bytes().rev().take_while(|&b| b == b'0').count() as u64;
    if output.starts_with('0') || zeros != trailing_zeros_of_factorial(n) {
        return Err(OutputError::Wrong { n });
    }
    Ok(())
}

fn trailing_zeros_of_factorial(n: u64) -> u64 {
    let mut zeros = 0;
    let mut power = 5u64;
    while power <= n {
        zeros += n / power;
        power = match power.checked_mul(5) {
            Some(p) => p,
            None => break,
        };
    }
    zeros
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_n_is_checked_exactly() {
        assert_eq!(check_output(0, Some(1), "1"), Ok(()));
        assert_eq!(check_output(10, Some(7), "3628800"), Ok(()));
        assert_eq!(check_output(10, None, "3628800"), Ok(()));
        assert_eq!(
            check_output(10, Some(7), "3628801"),
            Err(OutputError::Wrong { n: 10 })
        );
        assert_eq!(
            check_output(34, None, "295232799039604140847618609643520000000"),
            Ok(())
        );
    }

    #[test]
    fn malformed_outputs() {
        assert_eq!(
            check_output(10, Some(6), "3628800"),
            Err(OutputError::DigitCount { digits: 6, len: 7 })
        );
        assert_eq!(check_output(10, None, ""), Err(OutputError::NotDecimal));
        assert_eq!(
            check_output(10, None, "36288OO"),
            Err(OutputError::NotDecimal)
        );
    }

    #[test]
    fn large_n_trailing_zeros() {
        // 35! = 10333147966386144929666651337523200000000 (8 trailing zeros).
        let f35 = "10333147966386144929666651337523200000000";
        assert_eq!(check_output(35, Some(41), f35), Ok(()));
        assert_eq!(
            check_output(35, None, &f35[..40]),
            Err(OutputError::Wrong { n: 35 })
        );
        assert_eq!(trailing_zeros_of_factorial(100), 24);
        assert_eq!(trailing_zeros_of_factorial(1_000_000), 249_998);
    }
}
