//! How long a computation runs between two checkpoints, the points where a cancel or the time limit
//! can stop it: the longest gap bounds how late a stop comes.
//!
//! `cargo run --release -p herald-models --example checkpoint_gaps [--features malachite] -- N...`
//! prints, for each n, the time of the whole computation and the longest gap, medians of five runs,
//! for the built-in kernel and (with the feature) the malachite backend.

use std::time::{Duration, Instant};

use herald_models::compute::{self, Interrupted, Progress};

type Backend = fn(u64, &mut dyn FnMut(Progress) -> bool) -> Result<String, Interrupted>;

/// (total, longest gap) of one computation of n!.
fn measure(backend: Backend, n: u64) -> (Duration, Duration) {
    let start = Instant::now();
    let mut last = start;
    let mut longest = Duration::ZERO;
    let output = backend(n, &mut |_| {
        longest = longest.max(last.elapsed());
        last = Instant::now();
        true
    })
    .expect("a checkpoint that never stops cannot interrupt");
    longest = longest.max(last.elapsed());
    std::hint::black_box(output);
    (start.elapsed(), longest)
}

fn main() {
    let inputs: Vec<u64> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("each argument is an n"))
        .collect();
    let inputs = if inputs.is_empty() {
        vec![150_000, 1_000_000]
    } else {
        inputs
    };
    let backends: &[(&str, Backend)] = &[
        ("builtin", compute::factorial_decimal_builtin),
        #[cfg(feature = "malachite")]
        ("malachite", compute::factorial_decimal_malachite),
    ];
    println!("backend    n          total (ms)  longest gap (ms)   medians of 5 runs");
    for n in inputs {
        for (name, backend) in backends {
            let (mut totals, mut gaps): (Vec<_>, Vec<_>) =
                (0..5).map(|_| measure(*backend, n)).unzip();
            totals.sort();
            gaps.sort();
            let (total, gap) = (totals[2], gaps[2]);
            println!(
                "{name:<10} {n:<10} {:>10.3}  {:>16.3}",
                total.as_secs_f64() * 1e3,
                gap.as_secs_f64() * 1e3
            );
        }
    }
}
