//! The built-in model, `factorial`: n! as a decimal string, with big integers. The stand-in for a slow
//! model: its cost grows with n, from microseconds to seconds, and it reports real progress through its
//! two phases (the product, then the decimal conversion).

use std::borrow::Cow;

use async_trait::async_trait;
use herald_protocol::model::{factorial_input, json_string};
use herald_protocol::number::whole_number;
use herald_protocol::{Json, FACTORIAL};
use serde_json::value::RawValue;

use crate::compute::{self, Interrupted};
use crate::model::{InputError, Model, Progress, Run, RunError, Stop};

/// Below this n a computation is cheaper than a round trip to the store: such jobs neither share
/// results nor report progress or check for a cancel.
pub const MIN_SHARED_N: u64 = 2_000;

/// Below this n a computation takes under 20 µs here (about 17 µs at 500; BENCHMARKS.md,
/// "Throughput"), less than handing it to a blocking thread and back costs, so it runs in place.
pub const INLINE_BELOW_N: u64 = 500;

/// The factorial model, computing n! for n up to `max_n`.
#[derive(Debug, Clone)]
pub struct Factorial {
    max_n: u64,
}

impl Factorial {
    /// A factorial that refuses n above `max_n` (`--max-n`).
    pub fn new(max_n: u64) -> Self {
        Self { max_n }
    }

    /// The largest n computed.
    pub fn max_n(&self) -> u64 {
        self.max_n
    }

    /// Checks `n` against the maximum.
    pub fn check_n(&self, n: u64) -> Result<u64, InputError> {
        if n > self.max_n {
            return Err(InputError::TooLarge(format!(
                "\"n\" must be at most {}",
                self.max_n
            )));
        }
        Ok(n)
    }

    /// `n` of a validated input.
    fn n_of(input: &Json) -> u64 {
        herald_protocol::model::factorial_n(input.raw()).unwrap_or(0)
    }
}

#[async_trait]
impl Model for Factorial {
    fn name(&self) -> &str {
        FACTORIAL
    }

    /// Takes `{"n": N}` or a bare `N`: a whole number written with digits only, at most `max_n`.
    fn validate(&self, input: &Json) -> Result<Json, InputError> {
        let raw = match input.get().as_bytes().first() {
            Some(b'{') => {
                let fields: std::collections::HashMap<String, &RawValue> =
                    serde_json::from_str(input.get()).map_err(|_| not_an_input())?;
                *fields.get("n").ok_or_else(not_an_input)?
            }
            _ => input.raw(),
        };
        let n = whole_number(raw, u64::MAX).map_err(|e| match e {
            herald_protocol::number::NumberError::TooLarge => {
                InputError::TooLarge(e.describe("n", self.max_n))
            }
            other => InputError::Invalid(other.describe("n", self.max_n)),
        })?;
        self.check_n(n).map(factorial_input)
    }

    fn shares_results(&self, input: &Json) -> bool {
        Self::n_of(input) >= MIN_SHARED_N
    }

    fn is_quick(&self, input: &Json) -> bool {
        Self::n_of(input) < MIN_SHARED_N
    }

    async fn run(&self, input: Json, run: Run) -> Result<Json, RunError> {
        let n = Self::n_of(&input);
        if n > self.max_n {
            // The server checks this too; a worker still refuses what would exhaust its memory.
            return Err(RunError::Failed(format!(
                "n is above this worker's maximum of {}",
                self.max_n
            )));
        }
        if n < INLINE_BELOW_N {
            return compute::factorial_decimal(n, &mut |_| true)
                .map(|digits| json_string(&digits))
                // A checkpoint that never says stop cannot interrupt it.
                .map_err(|_| RunError::Failed("internal error while computing".into()));
        }
        let checked = run.clone();
        let computed = tokio::task::spawn_blocking(move || {
            compute::factorial_decimal(n, &mut |progress| {
                checked.report(Progress {
                    fraction: progress.fraction,
                    phase: Some(Cow::Borrowed(progress.phase.as_str())),
                });
                checked.should_stop().is_none()
            })
        })
        .await;
        match computed {
            Ok(Ok(digits)) => Ok(json_string(&digits)),
            Ok(Err(Interrupted)) => match run.should_stop() {
                Some(Stop::TimedOut) => Err(RunError::TimedOut),
                _ => Err(RunError::Stopped),
            },
            Err(panic) => {
                tracing::error!(error = %panic, "computation panicked");
                Err(RunError::Failed("internal error while computing".into()))
            }
        }
    }
}

fn not_an_input() -> InputError {
    InputError::Invalid(
        "the factorial's input is {\"n\": N}, N a whole number such as 150000".into(),
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use herald_protocol::model::json;
    use herald_protocol::JobId;

    use super::*;

    fn validate(text: &str) -> Result<String, InputError> {
        Factorial::new(1_000_000)
            .validate(&json(text).unwrap())
            .map(|input| input.get().to_owned())
    }

    #[test]
    fn inputs_are_checked_and_made_canonical() {
        assert_eq!(validate(r#"{"n": 10}"#).unwrap(), r#"{"n":10}"#);
        assert_eq!(validate("10").unwrap(), r#"{"n":10}"#);
        // Exactly whole, however written: made canonical, never rounded.
        assert_eq!(validate(r#"{"n":1e3}"#).unwrap(), r#"{"n":1000}"#);
        assert_eq!(validate(r#"{"n":10.0}"#).unwrap(), r#"{"n":10}"#);
        assert_eq!(
            validate(r#"{"n":1000000,"note":"x"}"#).unwrap(),
            r#"{"n":1000000}"#
        );
        for invalid in [
            r#"{"n":-1}"#,
            r#"{"n":1.5}"#,
            r#"{"n":"5"}"#,
            r#"{"m":5}"#,
            "[5]",
            "-0",
        ] {
            assert!(
                matches!(validate(invalid), Err(InputError::Invalid(_))),
                "{invalid}"
            );
        }
        for too_large in [
            r#"{"n":1000001}"#,
            &format!(r#"{{"n":{}}}"#, "9".repeat(40)),
        ] {
            assert!(
                matches!(validate(too_large), Err(InputError::TooLarge(_))),
                "{too_large}"
            );
        }
    }

    #[tokio::test]
    async fn runs_small_and_large_inputs() {
        let model = Factorial::new(1_000_000);
        let run = Run::detached(JobId::nil(), Duration::from_secs(60));
        let out = model.run(factorial_input(20), run.clone()).await.unwrap();
        assert_eq!(out.get(), "\"2432902008176640000\"");
        let out = model.run(factorial_input(3000), run).await.unwrap();
        assert_eq!(out.get().len(), 9131 + 2);
        assert!(model.shares_results(&factorial_input(3000)));
        assert!(model.is_quick(&factorial_input(20)));
    }

    #[tokio::test]
    async fn a_run_past_its_time_limit_is_timed_out() {
        let model = Factorial::new(10_000_000);
        let run = Run::detached(JobId::nil(), Duration::from_millis(1));
        assert_eq!(
            model.run(factorial_input(5_000_000), run).await,
            Err(RunError::TimedOut)
        );
    }
}
