//! Criterion benchmark of n! as a decimal string (product and conversion) for n = 150_000 and
//! 1_000_000: the built-in kernel against num-bigint baselines, malachite (feature `malachite`) and
//! GMP through rug (feature `bench-gmp`), the reference. Results are in BENCHMARKS.md.
//!
//! `cargo bench -p herald-models --bench compute --features malachite,bench-gmp`
//!
//! Every iteration computes the same n from scratch: nothing here caches (GMP keeps a table only
//! for tiny factorials), so distinct n per sample are not needed.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode};
use herald_models::compute;
use num_bigint::BigUint;

/// n = 1..=n multiplied one at a time, then `to_string`: what a first version would do.
fn plain_loop(n: u64) -> String {
    let mut acc = BigUint::from(1u32);
    for k in 2..=n {
        acc *= k;
    }
    acc.to_string()
}

/// Product of lo..=hi by a balanced tree, so the large multiplications are balanced and
/// num-bigint's Toom-3 gets to work.
fn tree_product(lo: u64, hi: u64) -> BigUint {
    if hi - lo < 32 {
        return (lo..=hi).fold(BigUint::from(1u32), |acc, k| acc * k);
    }
    let mid = lo + (hi - lo) / 2;
    tree_product(lo, mid) * tree_product(mid + 1, hi)
}

/// num-bigint's best plain effort: a balanced product tree, then its own `to_string`.
fn product_tree(n: u64) -> String {
    if n < 2 {
        return "1".to_owned();
    }
    tree_product(2, n).to_string()
}

fn builtin(n: u64) -> String {
    compute::factorial_decimal_builtin(n, &mut |_| true).expect("never interrupted")
}

#[cfg(feature = "malachite")]
fn malachite(n: u64) -> String {
    compute::factorial_decimal_malachite(n, &mut |_| true).expect("never interrupted")
}

#[cfg(feature = "bench-gmp")]
fn gmp(n: u64) -> String {
    let n = u32::try_from(n).expect("n fits in u32");
    rug::Integer::from(rug::Integer::factorial(n)).to_string()
}

fn factorial_decimal(c: &mut Criterion) {
    // Check once that every backend gives the same digits before timing any of them.
    let want = product_tree(2_000);
    assert_eq!(builtin(2_000), want);
    assert_eq!(plain_loop(2_000), want);
    #[cfg(feature = "malachite")]
    assert_eq!(malachite(2_000), want);
    #[cfg(feature = "bench-gmp")]
    assert_eq!(gmp(2_000), want);

    let mut group = c.benchmark_group("factorial_decimal");
    // One iteration takes from tens of milliseconds to seconds: flat sampling runs each sample
    // with the same (small) iteration count instead of criterion's growing ramp.
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_secs(1));
    group.measurement_time(Duration::from_secs(5));
    for n in [150_000u64, 1_000_000] {
        group.bench_with_input(BenchmarkId::new("builtin", n), &n, |b, &n| {
            b.iter(|| builtin(black_box(n)))
        });
        // About 112 s per iteration at 1_000_000: only at 150_000.
        if n <= 150_000 {
            group.bench_with_input(BenchmarkId::new("num-bigint plain loop", n), &n, |b, &n| {
                b.iter(|| plain_loop(black_box(n)))
            });
        }
        group.bench_with_input(
            BenchmarkId::new("num-bigint product tree", n),
            &n,
            |b, &n| b.iter(|| product_tree(black_box(n))),
        );
        #[cfg(feature = "malachite")]
        group.bench_with_input(BenchmarkId::new("malachite", n), &n, |b, &n| {
            b.iter(|| malachite(black_box(n)))
        });
        #[cfg(feature = "bench-gmp")]
        group.bench_with_input(BenchmarkId::new("gmp (rug)", n), &n, |b, &n| {
            b.iter(|| gmp(black_box(n)))
        });
    }
    group.finish();
}

criterion_group!(benches, factorial_decimal);
criterion_main!(benches);
