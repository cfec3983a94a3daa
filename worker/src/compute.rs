//! Placeholder compute kernel (being replaced by the product-tree / prime-swing version).

use num_bigint::BigUint;

/// The computation was stopped by its checkpoint before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("computation interrupted")]
pub struct Interrupted;

/// n! (exact).
pub fn factorial(n: u64) -> BigUint {
    (1..=n).fold(BigUint::from(1u32), |acc, k| acc * k)
}

/// n! as a decimal string.
pub fn factorial_decimal(
    n: u64,
    checkpoint: &mut dyn FnMut(f64) -> bool,
) -> Result<String, Interrupted> {
    if !checkpoint(0.0) {
        return Err(Interrupted);
    }
    let s = factorial(n).to_string();
    checkpoint(1.0);
    Ok(s)
}
