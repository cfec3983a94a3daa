//! The factorial model's compute kernel: exact n! and its decimal expansion, stoppable at checkpoints.
//!
//! The product. n! = 2^(n - popcount(n)) · odd(n), and odd(n) is the product of p^e(p) over the odd
//! primes p ≤ n, with e(p) from Legendre's formula. Writing every e(p) in binary,
//! odd(n) = ((P_K² · P_{K-1})² · …)² · P_0 where P_k is the product of the primes whose exponent has
//! bit k set. So the expensive steps are a handful of squarings of a growing number (the same shape
//! as the prime-swing method), each P_k is a balanced product tree over word-packed primes, and the
//! power of two is a final shift.
//!
//! Large multiplications use a number-theoretic transform modulo three 62-bit primes (recombined by
//! the Chinese remainder theorem): several times faster than num-bigint's Toom-3 at these sizes, and
//! it is made of many short passes that can report progress. Small ones stay with num-bigint.
//!
//! The decimal conversion. Divide and conquer over the powers B_k = 10^(19·2^k), the same tree
//! num-bigint's `to_string` uses, but every division is a Barrett division: the reciprocal of B_k
//! (one Newton step from that of B_{k-1}, then made exact) and the transforms of B_k and of its
//! reciprocal are computed once per level, so a division costs about one and a half
//! multiplications, where num-bigint's Burnikel–Ziegler division costs about 2.6 of its own, much
//! slower, multiplications. The number is first cut into base-B_top digits by schoolbook long
//! division, with `top` chosen by the cost model (the highest level's reciprocal often costs
//! more than the divisions it saves). Pieces below about 500 words go to num-bigint's
//! `to_string`, which is as fast as anything at that size. Measured on the reference machine, the
//! conversion of 1_000_000! takes about 0.8 s where `to_string` takes about 3.4 s.
//!
//! Progress. Every step reports an estimate of its cost (in nanoseconds on the reference machine)
//! to a meter; the meter calls the checkpoint whenever about a millisecond of work has accumulated,
//! with the fraction of the total estimated up front from the same cost formulas. The longest step
//! between two reports is one transform pass (a few milliseconds for n ≤ 1_000_000).

use std::cmp::Ordering;
use std::convert::Infallible;

use num_bigint::BigUint;

/// Which part of the work a computation is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Phase {
    /// Multiplying the factors of n!.
    Product,
    /// Converting the product to decimal.
    Decimal,
}

impl Phase {
    /// Every phase, in the order a computation goes through them.
    pub const ALL: [Self; 2] = [Self::Product, Self::Decimal];

    /// The name reported in progress messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Product => "product",
            Self::Decimal => "decimal",
        }
    }
}

/// A progress report: the fraction of the whole job done (both phases, weighted by their expected
/// cost) and the phase the work is in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// 0.0 ..= 1.0, non-decreasing, 1.0 only at the end.
    pub fraction: f64,
    /// Where the work is.
    pub phase: Phase,
}

/// The computation was stopped by its checkpoint (cancelled or out of time) before it finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("computation interrupted")]
pub struct Interrupted;

/// n! (exact).
///
/// n! has about n·log2(n/e) bits (2.3 MB for n = 1_000_000) and the work needs a few times that;
/// the worker bounds n, and an unbounded n simply runs out of memory.
pub fn factorial(n: u64) -> BigUint {
    let mut kernel = Kernel::new(Unmetered);
    let Ok(limbs) = kernel.factorial_limbs(n);
    to_biguint(&limbs)
}

/// n! as a decimal string, the job's output.
///
/// `checkpoint(progress)` is called regularly with the fraction of the work done so far (0.0 ..= 1.0,
/// non-decreasing, reaching 1.0 at the end), often enough that a caller can stop the work within about
/// 100 ms of wall time on a slow machine for any n up to 1_000_000 (also during the decimal
/// conversion), and the function returns Err(Interrupted) soon after `checkpoint` returns false.
/// The fraction reflects real work through both phases (the product, then the decimal
/// conversion), weighted by their expected cost, not a timer.
///
/// The backend is chosen at build time: [`factorial_decimal_builtin`] by default, and
/// [`factorial_decimal_malachite`] with the cargo feature `malachite` (see its limitation).
pub fn factorial_decimal(
    n: u64,
    checkpoint: &mut dyn FnMut(Progress) -> bool,
) -> Result<String, Interrupted> {
    #[cfg(feature = "malachite")]
    {
        factorial_decimal_malachite(n, checkpoint)
    }
    #[cfg(not(feature = "malachite"))]
    {
        factorial_decimal_builtin(n, checkpoint)
    }
}

/// [`factorial_decimal`] with the built-in kernel (num-bigint, NTT multiplication, Barrett
/// decimal conversion): the default backend, compiled in every build so that the optional one can
/// be tested and benchmarked against it.
pub fn factorial_decimal_builtin(
    n: u64,
    checkpoint: &mut dyn FnMut(Progress) -> bool,
) -> Result<String, Interrupted> {
    let mut kernel = Kernel::new(Metered::new(checkpoint));
    kernel.meter.report()?;
    let factors = Factors::new(n);
    kernel.meter.total = factors.product_cost() + conversion_cost(factors.result_limbs());
    kernel.meter.work(sieve_cost(n))?;
    let odd = kernel.odd_factorial(&factors)?;
    let limbs = shl_bits(&odd, factors.twos);
    drop(odd);
    kernel.meter.phase = Phase::Decimal;
    let decimal = kernel.decimal(limbs)?;
    kernel.meter.finish()?;
    Ok(decimal)
}

// ---------------------------------------------------------------------------------------------
// Progress metering

/// Where the kernel reports finished work. `factorial` uses a meter that never stops, so its
/// `Stop` type is uninhabited and the same code serves both entry points without unwrapping.
trait Meter {
    type Stop;
    /// Records `cost` (estimated nanoseconds) of finished work; may call the checkpoint.
    fn work(&mut self, cost: f64) -> Result<(), Self::Stop>;
}

struct Unmetered;

impl Meter for Unmetered {
    type Stop = Infallible;
    fn work(&mut self, _cost: f64) -> Result<(), Infallible> {
        Ok(())
    }
}

/// Work accumulated between two calls of the checkpoint (estimated nanoseconds). Small enough that
/// the gaps stay far below 100 ms, large enough that the callback is not called needlessly often.
const REPORT_QUANTUM: f64 = 1.0e6;

/// The fraction reported before the end: 1.0 is kept for the finished result, and estimates that
/// fall short of the real work make the fraction wait here rather than claim completion.
const MAX_FRACTION_BEFORE_END: f64 = 0.999;

struct Metered<'a> {
    checkpoint: &'a mut dyn FnMut(Progress) -> bool,
    phase: Phase,
    total: f64,
    done: f64,
    unreported: f64,
    reported: f64,
}

impl<'a> Metered<'a> {
    fn new(checkpoint: &'a mut dyn FnMut(Progress) -> bool) -> Self {
        Metered {
            checkpoint,
            phase: Phase::Product,
            total: f64::INFINITY,
            done: 0.0,
            unreported: 0.0,
            reported: 0.0,
        }
    }

    fn report(&mut self) -> Result<(), Interrupted> {
        self.unreported = 0.0;
        let fraction = (self.done / self.total).clamp(self.reported, MAX_FRACTION_BEFORE_END);
        self.reported = fraction;
        let progress = Progress {
            fraction,
            phase: self.phase,
        };
        if (self.checkpoint)(progress) {
            Ok(())
        } else {
            Err(Interrupted)
        }
    }

    fn finish(&mut self) -> Result<(), Interrupted> {
        self.reported = 1.0;
        let progress = Progress {
            fraction: 1.0,
            phase: self.phase,
        };
        if (self.checkpoint)(progress) {
            Ok(())
        } else {
            Err(Interrupted)
        }
    }
}

impl Meter for Metered<'_> {
    type Stop = Interrupted;
    fn work(&mut self, cost: f64) -> Result<(), Interrupted> {
        self.done += cost;
        self.unreported += cost;
        if self.unreported >= REPORT_QUANTUM {
            self.report()
        } else {
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Cost model (estimated nanoseconds on the reference machine). Used both to report work as it is
// done and to estimate the total up front, so the fraction moves with the real work.

/// One transform (forward or inverse) of length `n` for one prime.
fn transform_cost(n: usize) -> f64 {
    let n = n as f64;
    1.1 * n * n.log2().max(1.0)
}

/// Pointwise products and the CRT recombination of a length-`n` product.
fn recombine_cost(n: usize) -> f64 {
    15.0 * n as f64
}

/// num-bigint multiplication of `s` by `l` limbs (s ≤ l): Karatsuba-like on blocks of `s`.
fn small_mul_cost(s: usize, l: usize) -> f64 {
    let s = s.max(1) as f64;
    4.0 * s.powf(0.585) * l as f64 + 20.0
}

/// num-bigint `to_string` of a number of `limbs` words.
fn to_string_cost(limbs: usize) -> f64 {
    let l = limbs.max(1) as f64;
    13.0 * l.powf(1.55) + 50.0
}

/// A pass over `limbs` words (additions, shifts, copies).
fn linear_cost(limbs: usize) -> f64 {
    limbs as f64
}

fn sieve_cost(n: u64) -> f64 {
    3.0 * n as f64
}

// ---------------------------------------------------------------------------------------------
// The factors of n!

/// n! = 2^twos · Π_k P_k^(2^k): `layers[k]` holds the odd primes whose exponent in n! has bit k
/// set, packed into words.
struct Factors {
    layers: Vec<Vec<u64>>,
    twos: u64,
}

impl Factors {
    fn new(n: u64) -> Self {
        let primes = odd_primes(n);
        let exponents: Vec<u64> = primes.iter().map(|&p| legendre(n, p)).collect();
        // The largest exponent is that of 3.
        let bits = exponents
            .first()
            .map_or(0, |e| u64::BITS - e.leading_zeros());
        let layers = (0..bits)
            .map(|k| {
                pack(
                    primes
                        .iter()
                        .zip(&exponents)
                        .filter(|&(_, e)| (e >> k) & 1 == 1)
                        .map(|(&p, _)| p),
                )
            })
            .collect();
        Factors {
            layers,
            twos: n - u64::from(n.count_ones()),
        }
    }

    /// Limbs of the odd part after folding in layers k.. (index k), from the sizes of the words.
    fn odd_limbs(&self) -> Vec<usize> {
        let mut bits = 0.0f64;
        let mut sizes = vec![0; self.layers.len()];
        for (k, layer) in self.layers.iter().enumerate().rev() {
            bits = 2.0 * bits + layer.iter().map(|&w| (w as f64).log2()).sum::<f64>();
            sizes[k] = (bits / 64.0).ceil() as usize + 1;
        }
        sizes
    }

    /// Limbs of n!.
    fn result_limbs(&self) -> usize {
        let odd = self.odd_limbs().first().copied().unwrap_or(1);
        odd.saturating_add(usize::try_from(self.twos / 64).unwrap_or(usize::MAX))
            .saturating_add(1)
    }

    /// Estimated cost of `Kernel::odd_factorial`.
    fn product_cost(&self) -> f64 {
        let acc = self.odd_limbs();
        let mut cost = 0.0;
        for (k, layer) in self.layers.iter().enumerate() {
            let (pk_limbs, tree) = product_tree_cost(layer);
            cost += tree;
            if let Some(&prev) = acc.get(k + 1) {
                cost += mul_cost(prev, prev, true) + mul_cost(2 * prev, pk_limbs, false);
            }
        }
        cost
    }
}

/// Odd primes up to n, from a sieve over the odd numbers (one bit each).
fn odd_primes(n: u64) -> Vec<u64> {
    if n < 3 {
        return Vec::new();
    }
    // Index i stands for 2i + 1; index 0 (the number 1) is skipped.
    let count = n.div_ceil(2);
    let words = usize::try_from(count.div_ceil(64)).unwrap_or(usize::MAX);
    let mut composite = vec![0u64; words];
    let mut i = 1u64;
    loop {
        let p = 2 * i + 1;
        if p.checked_mul(p).is_none_or(|sq| sq > n) {
            break;
        }
        if composite[(i / 64) as usize] >> (i % 64) & 1 == 0 {
            // Odd multiples of p from p², stepping by 2p, i.e. by p in index space.
            let mut j = (p * p) / 2;
            while j < count {
                composite[(j / 64) as usize] |= 1 << (j % 64);
                j += p;
            }
        }
        i += 1;
    }
    (1..count)
        .filter(|&i| composite[(i / 64) as usize] >> (i % 64) & 1 == 0)
        .map(|i| 2 * i + 1)
        .collect()
}

/// Exponent of the prime p in n! (Legendre).
fn legendre(n: u64, p: u64) -> u64 {
    let mut e = 0;
    let mut m = n;
    while m >= p {
        m /= p;
        e += m;
    }
    e
}

/// Multiplies consecutive factors together while the product fits in a word, so the product
/// tree starts from full words instead of many tiny numbers.
fn pack(factors: impl Iterator<Item = u64>) -> Vec<u64> {
    let mut out = Vec::new();
    let mut acc = 1u64;
    for f in factors {
        match acc.checked_mul(f) {
            Some(x) => acc = x,
            None => {
                out.push(acc);
                acc = f;
            }
        }
    }
    if acc != 1 {
        out.push(acc);
    }
    out
}

/// Leaves per product-tree node below which num-bigint multiplies the whole subtree.
const SMALL_TREE_LEAVES: usize = 16;

/// (limbs of the product, estimated cost of `Kernel::product`) for these leaves.
fn product_tree_cost(leaves: &[u64]) -> (usize, f64) {
    if leaves.len() <= SMALL_TREE_LEAVES {
        let n = leaves.len();
        return (n.max(1), small_mul_cost(n.max(1), n.max(1)));
    }
    let (left, right) = leaves.split_at(leaves.len() / 2);
    let (a, ca) = product_tree_cost(left);
    let (b, cb) = product_tree_cost(right);
    (a + b, ca + cb + mul_cost(a, b, false))
}

// ---------------------------------------------------------------------------------------------
// Limb arithmetic on little-endian u64 vectors, normalized (no high zero limbs; zero is empty).

fn normalize(v: &mut Vec<u64>) {
    while v.last() == Some(&0) {
        v.pop();
    }
}

fn normalized(mut v: Vec<u64>) -> Vec<u64> {
    normalize(&mut v);
    v
}

fn to_biguint(v: &[u64]) -> BigUint {
    BigUint::new(
        v.iter()
            .flat_map(|&d| [d as u32, (d >> 32) as u32])
            .collect(),
    )
}

fn cmp_limbs(a: &[u64], b: &[u64]) -> Ordering {
    a.len()
        .cmp(&b.len())
        .then_with(|| a.iter().rev().cmp(b.iter().rev()))
}

/// a -= b, for a ≥ b.
fn sub_assign(a: &mut Vec<u64>, b: &[u64]) {
    let mut borrow = false;
    for (i, x) in a.iter_mut().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        if i >= b.len() && !borrow {
            break;
        }
        let (d, b1) = x.overflowing_sub(y);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        *x = d;
        borrow = b1 || b2;
    }
    debug_assert!(!borrow, "sub_assign underflow");
    normalize(a);
}

/// a += b · β^offset.
fn add_at(a: &mut Vec<u64>, b: &[u64], offset: usize) {
    if a.len() < offset + b.len() {
        a.resize(offset + b.len(), 0);
    }
    let mut carry = false;
    let mut i = offset;
    for &y in b {
        let (s, c1) = a[i].overflowing_add(y);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        a[i] = s;
        carry = c1 || c2;
        i += 1;
    }
    while carry {
        if i == a.len() {
            a.push(0);
        }
        let (s, c) = a[i].overflowing_add(1);
        a[i] = s;
        carry = c;
        i += 1;
    }
}

/// a += 1.
fn increment(a: &mut Vec<u64>) {
    add_at(a, &[1], 0);
}

/// a -= 1, for a ≥ 1.
fn decrement(a: &mut Vec<u64>) {
    sub_assign(a, &[1]);
}

/// a · 2^bits.
fn shl_bits(a: &[u64], bits: u64) -> Vec<u64> {
    let words = usize::try_from(bits / 64).unwrap_or(usize::MAX);
    let shift = (bits % 64) as u32;
    let mut out = vec![0u64; words];
    out.reserve(a.len() + 1);
    if shift == 0 {
        out.extend_from_slice(a);
    } else {
        let mut carry = 0u64;
        for &x in a {
            out.push((x << shift) | carry);
            carry = x >> (64 - shift);
        }
        out.push(carry);
    }
    normalized(out)
}

/// x mod (β^m − 1) as m limbs, for x with at most 2m limbs.
fn fold(x: &[u64], m: usize) -> Vec<u64> {
    let mut out = vec![0u64; m];
    let lo = x.len().min(m);
    out[..lo].copy_from_slice(&x[..lo]);
    let mut carry = false;
    for (i, &y) in x[lo..].iter().enumerate() {
        let (s, c1) = out[i].overflowing_add(y);
        let (s, c2) = s.overflowing_add(u64::from(carry));
        out[i] = s;
        carry = c1 || c2;
    }
    let mut i = x.len() - lo;
    while carry {
        // End-around carry: β^m ≡ 1. The sum is below 2β^m, so this settles within one round.
        if i == m {
            i = 0;
        }
        let (s, c) = out[i].overflowing_add(1);
        out[i] = s;
        carry = c;
        i += 1;
    }
    out
}

/// (x − w) mod (β^m − 1) for m-limb residues, normalized; β^m − 1 itself is read as 0.
fn sub_mod(x: &[u64], w: &[u64], m: usize) -> Vec<u64> {
    let mut out = Vec::with_capacity(m);
    let mut borrow = false;
    for (&x, &w) in x[..m].iter().zip(&w[..m]) {
        let (d, b1) = x.overflowing_sub(w);
        let (d, b2) = d.overflowing_sub(u64::from(borrow));
        out.push(d);
        borrow = b1 || b2;
    }
    if borrow {
        // Went below zero: add β^m − 1, i.e. subtract one more from the wrapped value (no
        // further borrow: the wrapped value is at least 1).
        for d in out.iter_mut() {
            let (s, b) = d.overflowing_sub(1);
            *d = s;
            if !b {
                break;
            }
        }
    }
    if out.iter().all(|&d| d == u64::MAX) {
        out.clear();
    }
    normalized(out)
}

/// β^s − a for a < β^s.
fn power_minus(a: &[u64], s: usize) -> Vec<u64> {
    // Two's complement over s limbs.
    let mut out: Vec<u64> = (0..s).map(|i| !a.get(i).copied().unwrap_or(0)).collect();
    for d in out.iter_mut() {
        let (x, c) = d.overflowing_add(1);
        *d = x;
        if !c {
            break;
        }
    }
    normalized(out)
}

// ---------------------------------------------------------------------------------------------
// Number-theoretic transform over three primes

/// Arithmetic modulo a prime p < 2^62 of the form c·2^26 + 1, with Montgomery multiplication.
#[derive(Clone, Copy)]
struct Field {
    p: u64,
    /// p^-1 mod 2^64.
    p_inv: u64,
    /// 2^128 mod p, to enter Montgomery form.
    r2: u64,
    /// A generator of the multiplicative group.
    generator: u64,
}

impl Field {
    const fn new(p: u64, generator: u64) -> Field {
        // Newton's iteration for the inverse mod 2^64 doubles the correct bits each step.
        let mut inv: u64 = 1;
        let mut i = 0;
        while i < 6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(p.wrapping_mul(inv)));
            i += 1;
        }
        let r = ((1u128 << 64) % p as u128) as u64;
        let r2 = ((r as u128 * r as u128) % p as u128) as u64;
        Field {
            p,
            p_inv: inv,
            r2,
            generator,
        }
    }

    /// a·b/2^64 mod p, for a·b < p·2^64; the result is below p.
    #[inline]
    fn mul(self, a: u64, b: u64) -> u64 {
        let t = a as u128 * b as u128;
        let m = (t as u64).wrapping_mul(self.p_inv);
        let mp = ((m as u128 * self.p as u128) >> 64) as u64;
        let d = ((t >> 64) as u64).wrapping_sub(mp);
        // `min` picks the value that did not wrap; it compiles to a conditional move, where a
        // branch would be mispredicted half the time.
        d.min(d.wrapping_add(self.p))
    }

    /// a·b/2^64 mod p in [0, 2p), for a·b < p·2^64: `mul` without the final correction. The
    /// transforms keep values in [0, 2p) (p < 2^62 leaves room), which saves a correction per
    /// butterfly.
    #[inline]
    fn mul_lazy(self, a: u64, b: u64) -> u64 {
        let t = a as u128 * b as u128;
        let m = (t as u64).wrapping_mul(self.p_inv);
        let mp = ((m as u128 * self.p as u128) >> 64) as u64;
        // t/2^64 − mp lies in (−p, p).
        ((t >> 64) as u64).wrapping_sub(mp).wrapping_add(self.p)
    }

    /// x in [0, 4p) reduced to [0, 2p).
    #[inline]
    fn fold2(self, x: u64) -> u64 {
        // A mask rather than `min` as elsewhere: in the butterfly loops the optimizer turns `min`
        // into SSE2 emulation of 64-bit comparisons, which is much slower than this scalar code.
        let two_p = 2 * self.p;
        x.wrapping_sub(two_p & 0u64.wrapping_sub(u64::from(x >= two_p)))
    }

    #[inline]
    fn add(self, a: u64, b: u64) -> u64 {
        let s = a + b;
        s.min(s.wrapping_sub(self.p))
    }

    #[inline]
    fn sub(self, a: u64, b: u64) -> u64 {
        let d = a.wrapping_sub(b);
        d.min(d.wrapping_add(self.p))
    }

    /// Any word reduced below p: p > 2^62 − 2^34, so a word is below 4p + 2^36 and three
    /// conditional subtractions suffice.
    #[inline]
    fn reduce(self, a: u64) -> u64 {
        let a = a.min(a.wrapping_sub(2 * self.p));
        let a = a.min(a.wrapping_sub(self.p));
        a.min(a.wrapping_sub(self.p))
    }

    fn to_mont(self, a: u64) -> u64 {
        self.mul(self.reduce(a), self.r2)
    }

    /// base^e for base in Montgomery form; the result is in Montgomery form.
    fn pow(self, mut base: u64, mut e: u64) -> u64 {
        let mut r = self.to_mont(1);
        while e > 0 {
            if e & 1 == 1 {
                r = self.mul(r, base);
            }
            base = self.mul(base, base);
            e >>= 1;
        }
        r
    }

    fn inverse(self, a_mont: u64) -> u64 {
        self.pow(a_mont, self.p - 2)
    }
}

const FIELDS: [Field; 3] = [
    Field::new(0x3fff_ffff_cc00_0001, 5),
    Field::new(0x3fff_ffff_3400_0001, 3),
    Field::new(0x3fff_fffe_0800_0001, 6),
];

/// Longest transform: 2^26 divides p − 1 for the three primes.
const NTT_MAX_LEN: usize = 1 << 26;

/// Below this many limbs in the shorter factor num-bigint multiplies faster than the transform.
const NTT_MIN_LIMBS: usize = 900;

/// A number transformed modulo each of the three primes.
type Spectrum = [Vec<u64>; 3];

/// Root tables, grown on demand: `forward[f][h + j]` is ω_{2h}^j (Montgomery form) for the prime
/// `f`, for every power of two h below the longest transform so far; `inverse` holds the inverses.
/// One table serves every length, and each stage reads its roots contiguously.
struct Ntt {
    forward: [Vec<u64>; 3],
    inverse: [Vec<u64>; 3],
}

impl Ntt {
    fn new() -> Self {
        Ntt {
            forward: Default::default(),
            inverse: Default::default(),
        }
    }

    fn reserve(&mut self, n: usize) {
        for (f, field) in FIELDS.iter().enumerate() {
            let fwd = &mut self.forward[f];
            let inv = &mut self.inverse[f];
            if fwd.is_empty() {
                fwd.push(0);
                inv.push(0);
            }
            let mut h = fwd.len();
            while h < n {
                let g = field.to_mont(field.generator);
                let w = field.pow(g, (field.p - 1) / (2 * h as u64));
                let w_inv = field.inverse(w);
                let (mut x, mut y) = (field.to_mont(1), field.to_mont(1));
                for _ in 0..h {
                    fwd.push(x);
                    inv.push(y);
                    x = field.mul(x, w);
                    y = field.mul(y, w_inv);
                }
                h *= 2;
            }
        }
    }
}

/// Transforms up to this length run stage by stage; longer ones split depth-first, so that all
/// but their first few stages work on blocks that stay in the cache.
const TRANSFORM_BLOCK: usize = 1 << 12;

/// Decimation-in-frequency transform, values in [0, 2p): natural order in, bit-reversed order out.
fn dif(a: &mut [u64], f: Field, roots: &[u64]) {
    let n = a.len();
    if n <= TRANSFORM_BLOCK {
        let mut half = n / 2;
        while half >= 2 {
            for block in a.chunks_exact_mut(2 * half) {
                let (x, y) = block.split_at_mut(half);
                dif_stage(x, y, &roots[half..2 * half], f);
            }
            half /= 2;
        }
        if n >= 2 {
            // The last stage's root is 1.
            for pair in a.chunks_exact_mut(2) {
                let (u, v) = (pair[0], pair[1]);
                pair[0] = f.fold2(u + v);
                pair[1] = f.fold2(u + 2 * f.p - v);
            }
        }
        return;
    }
    let half = n / 2;
    let (x, y) = a.split_at_mut(half);
    dif_stage(x, y, &roots[half..n], f);
    dif(x, f, roots);
    dif(y, f, roots);
}

#[inline]
fn dif_stage(x: &mut [u64], y: &mut [u64], w: &[u64], f: Field) {
    for ((x, y), &w) in x.iter_mut().zip(y.iter_mut()).zip(w) {
        let (u, v) = (*x, *y);
        *x = f.fold2(u + v);
        *y = f.mul_lazy(u + 2 * f.p - v, w);
    }
}

/// Decimation-in-time transform, values in [0, 2p): bit-reversed order in, natural order out.
fn dit(a: &mut [u64], f: Field, roots: &[u64]) {
    let n = a.len();
    if n <= TRANSFORM_BLOCK {
        if n >= 2 {
            for pair in a.chunks_exact_mut(2) {
                let (u, v) = (pair[0], pair[1]);
                pair[0] = f.fold2(u + v);
                pair[1] = f.fold2(u + 2 * f.p - v);
            }
        }
        let mut half = 2;
        while half < n {
            for block in a.chunks_exact_mut(2 * half) {
                let (x, y) = block.split_at_mut(half);
                dit_stage(x, y, &roots[half..2 * half], f);
            }
            half *= 2;
        }
        return;
    }
    let half = n / 2;
    let (x, y) = a.split_at_mut(half);
    dit(x, f, roots);
    dit(y, f, roots);
    dit_stage(x, y, &roots[half..n], f);
}

#[inline]
fn dit_stage(x: &mut [u64], y: &mut [u64], w: &[u64], f: Field) {
    for ((x, y), &w) in x.iter_mut().zip(y.iter_mut()).zip(w) {
        let u = *x;
        let t = f.mul_lazy(*y, w);
        *x = f.fold2(u + t);
        *y = f.fold2(u + 2 * f.p - t);
    }
}

/// Recombines the three residues of each coefficient (Garner) and propagates carries into limbs,
/// returning the limbs in the first residue buffer. With `wrap`, the carry out of the top limb
/// re-enters at the bottom: the result is then the cyclic product mod β^n − 1.
fn recombine(spectrum: &mut Spectrum, wrap: bool) -> Vec<u64> {
    let [f1, f2, f3] = FIELDS;
    let inv_p1_mod_p2 = f2.inverse(f2.to_mont(f1.p));
    let p1_mod_p3 = f3.to_mont(f1.p);
    let p1p2 = f1.p as u128 * f2.p as u128;
    let inv_p1p2_mod_p3 = f3.inverse(f3.to_mont((p1p2 % f3.p as u128) as u64));
    let (p12_lo, p12_hi) = (p1p2 as u64 as u128, (p1p2 >> 64) as u64 as u128);

    // Mixed-radix digits first, then the carries: the first loop has no dependency between
    // coefficients, so the processor overlaps its multiplications.
    let [s1, s2, s3] = spectrum;
    for ((x1, x2), x3) in s1.iter_mut().zip(s2.iter_mut()).zip(s3.iter_mut()) {
        let (r1, r2, r3) = (f1.reduce(*x1), f2.reduce(*x2), f3.reduce(*x3));
        let v2 = f2.mul(f2.sub(r2, f2.reduce(r1)), inv_p1_mod_p2);
        let partial = f3.add(f3.reduce(r1), f3.mul(v2, p1_mod_p3));
        *x1 = r1;
        *x2 = v2;
        *x3 = f3.mul(f3.sub(r3, partial), inv_p1p2_mod_p3);
    }
    // Each coefficient is r1 + v2·p1 + v3·p1·p2 < p1·p2·p3 < 2^186; the carry stays below 2^123
    // because the coefficients are below n·2^128 ≤ 2^154.
    let mut carry: u128 = 0;
    for ((x1, &v2), &v3) in s1.iter_mut().zip(s2.iter()).zip(s3.iter()) {
        let low = *x1 as u128 + v2 as u128 * f1.p as u128;
        let t_lo = v3 as u128 * p12_lo;
        let t_hi = v3 as u128 * p12_hi;
        let (s, c1) = low.overflowing_add(t_lo);
        let (s, c2) = s.overflowing_add(t_hi << 64);
        let (s, c3) = s.overflowing_add(carry);
        let high = (t_hi >> 64) as u64 + u64::from(c1) + u64::from(c2) + u64::from(c3);
        *x1 = s as u64;
        carry = (s >> 64) | ((high as u128) << 64);
    }
    let mut out = std::mem::take(s1);
    let n = out.len();
    if wrap {
        let mut i = 0;
        while carry != 0 {
            if i == n {
                i = 0;
            }
            let (s, c) = out[i].overflowing_add(carry as u64);
            out[i] = s;
            carry = (carry >> 64) + u128::from(c);
            i += 1;
        }
    } else {
        // Callers size n to hold the product, so this is zero; kept exact regardless.
        while carry != 0 {
            out.push(carry as u64);
            carry >>= 64;
        }
    }
    out
}

/// How `mul` multiplies an s-limb number by an l-limb one (s ≤ l).
#[derive(Debug, Clone, Copy, PartialEq)]
enum MulPlan {
    /// num-bigint's own multiplication.
    Small,
    /// Transforms of length `n`; the longer factor is cut into pieces of `chunk` limbs, each
    /// multiplied by the once-transformed shorter factor (one piece when the sizes are close).
    Ntt { n: usize, chunk: usize },
}

fn plan_mul(s: usize, l: usize, square: bool) -> MulPlan {
    if s < NTT_MIN_LIMBS {
        return MulPlan::Small;
    }
    if square {
        let n = (2 * s).next_power_of_two();
        return if n <= NTT_MAX_LEN {
            MulPlan::Ntt { n, chunk: l }
        } else {
            MulPlan::Small
        };
    }
    let mut best: Option<(f64, MulPlan)> = None;
    let mut n = (2 * s).next_power_of_two();
    while n <= NTT_MAX_LEN {
        // A piece of c limbs times s limbs has at most c + s limbs, which must fit in n.
        let chunk = (n - s).min(l);
        let pieces = l.div_ceil(chunk);
        let cost =
            3.0 * transform_cost(n) * (1 + 2 * pieces) as f64 + recombine_cost(n) * pieces as f64;
        if best.is_none_or(|(c, _)| cost < c) {
            best = Some((cost, MulPlan::Ntt { n, chunk }));
        }
        if chunk == l {
            break;
        }
        n *= 2;
    }
    best.map_or(MulPlan::Small, |(_, plan)| plan)
}

/// Estimated cost of `Kernel::mul` (what it reports).
fn mul_cost(s: usize, l: usize, square: bool) -> f64 {
    let (s, l) = if s <= l { (s, l) } else { (l, s) };
    match plan_mul(s, l, square) {
        MulPlan::Small => small_mul_cost(s, l),
        MulPlan::Ntt { n, chunk } => {
            let pieces = l.div_ceil(chunk);
            let transforms = if square { 2 } else { 1 + 2 * pieces };
            3.0 * transform_cost(n) * transforms as f64 + recombine_cost(n) * pieces as f64
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The kernel: arithmetic that reports its work

/// Transform buffers kept for reuse (three make one spectrum).
const SPARE_BUFFERS: usize = 6;

struct Kernel<M: Meter> {
    meter: M,
    ntt: Ntt,
    spare: Vec<Vec<u64>>,
}

impl<M: Meter> Kernel<M> {
    fn new(meter: M) -> Self {
        Kernel {
            meter,
            ntt: Ntt::new(),
            spare: Vec::new(),
        }
    }

    fn factorial_limbs(&mut self, n: u64) -> Result<Vec<u64>, M::Stop> {
        let factors = Factors::new(n);
        let odd = self.odd_factorial(&factors)?;
        Ok(shl_bits(&odd, factors.twos))
    }

    /// The odd part of n!: square-and-multiply over the bits of the exponents, top bit first.
    fn odd_factorial(&mut self, factors: &Factors) -> Result<Vec<u64>, M::Stop> {
        let mut acc = vec![1u64];
        for layer in factors.layers.iter().rev() {
            let pk = self.product(layer)?;
            acc = if acc == [1] {
                pk
            } else {
                let square = self.mul(&acc, &acc)?;
                drop(acc);
                self.mul(&square, &pk)?
            };
        }
        Ok(acc)
    }

    /// Product of the leaves by a balanced tree.
    fn product(&mut self, leaves: &[u64]) -> Result<Vec<u64>, M::Stop> {
        if leaves.len() <= SMALL_TREE_LEAVES {
            let n = leaves.len();
            let product: BigUint = leaves.iter().map(|&x| BigUint::from(x)).product();
            self.meter.work(small_mul_cost(n.max(1), n.max(1)))?;
            return Ok(product.to_u64_digits());
        }
        let (left, right) = leaves.split_at(leaves.len() / 2);
        let a = self.product(left)?;
        let b = self.product(right)?;
        self.mul(&a, &b)
    }

    /// a·b; squares when a and b are the same slice.
    fn mul(&mut self, a: &[u64], b: &[u64]) -> Result<Vec<u64>, M::Stop> {
        if a.is_empty() || b.is_empty() {
            return Ok(Vec::new());
        }
        let square = std::ptr::eq(a, b);
        let (short, long) = if a.len() <= b.len() { (a, b) } else { (b, a) };
        match plan_mul(short.len(), long.len(), square) {
            MulPlan::Small => {
                let product = if square {
                    let x = to_biguint(a);
                    &x * &x
                } else {
                    to_biguint(a) * to_biguint(b)
                };
                self.meter.work(small_mul_cost(short.len(), long.len()))?;
                Ok(product.to_u64_digits())
            }
            MulPlan::Ntt { n, .. } if square => {
                let mut spectrum = self.forward(a, n)?;
                square_pointwise(&mut spectrum);
                let mut product = self.inverse(spectrum, false)?;
                normalize(&mut product);
                Ok(product)
            }
            MulPlan::Ntt { n, chunk } => {
                let mut short_spectrum = self.forward(short, n)?;
                scale(&mut short_spectrum);
                let mut product = Vec::with_capacity(a.len() + b.len());
                for (i, piece) in long.chunks(chunk).enumerate() {
                    let mut spectrum = self.forward(piece, n)?;
                    pointwise(&mut spectrum, &short_spectrum);
                    let part = self.inverse(spectrum, false)?;
                    add_at(&mut product, &part, i * chunk);
                    self.recycle(part);
                }
                let [a, b, c] = short_spectrum;
                for buffer in [a, b, c] {
                    self.recycle(buffer);
                }
                normalize(&mut product);
                Ok(product)
            }
        }
    }

    /// The transform of `digits` (at most n limbs) at length n.
    fn forward(&mut self, digits: &[u64], n: usize) -> Result<Spectrum, M::Stop> {
        debug_assert!(digits.len() <= n);
        self.ntt.reserve(n);
        let mut spectrum: Spectrum = Default::default();
        for (f, field) in FIELDS.iter().enumerate() {
            let mut v = self.spare.pop().unwrap_or_default();
            v.clear();
            v.extend(digits.iter().map(|&x| field.reduce(x)));
            v.resize(n, 0);
            dif(&mut v, *field, &self.ntt.forward[f][..n]);
            spectrum[f] = v;
            self.meter.work(transform_cost(n))?;
        }
        Ok(spectrum)
    }

    /// The product whose pointwise spectrum this is: linear (the caller guarantees it fits in n
    /// limbs) or, with `wrap`, modulo β^n − 1.
    fn inverse(&mut self, mut spectrum: Spectrum, wrap: bool) -> Result<Vec<u64>, M::Stop> {
        let n = spectrum[0].len();
        for (f, field) in FIELDS.iter().enumerate() {
            dit(&mut spectrum[f], *field, &self.ntt.inverse[f][..n]);
            self.meter.work(transform_cost(n))?;
        }
        let product = recombine(&mut spectrum, wrap);
        let [_, b, c] = spectrum;
        self.recycle(b);
        self.recycle(c);
        self.meter.work(recombine_cost(n))?;
        Ok(product)
    }

    /// Keeps a transform buffer for reuse: fresh multi-megabyte allocations cost page faults
    /// comparable to a transform pass.
    fn recycle(&mut self, buffer: Vec<u64>) {
        if self.spare.len() < SPARE_BUFFERS {
            self.spare.push(buffer);
        }
    }
}

/// a ← a·b, for b scaled by `scale`.
fn pointwise(a: &mut Spectrum, b: &Spectrum) {
    for (f, field) in FIELDS.iter().enumerate() {
        for (x, &y) in a[f].iter_mut().zip(&b[f]) {
            *x = field.mul_lazy(*x, y);
        }
    }
}

/// a ← a², with the scaling of `scale`.
fn square_pointwise(a: &mut Spectrum) {
    let n = a[0].len() as u64;
    for (f, field) in FIELDS.iter().enumerate() {
        let k = field.mul(field.inverse(field.to_mont(n)), field.r2);
        for x in a[f].iter_mut() {
            *x = field.mul_lazy(field.mul_lazy(*x, k), *x);
        }
    }
}

/// Multiplies a spectrum by 2^64/n, so that a pointwise Montgomery product with it (which divides
/// by 2^64) followed by the unnormalized inverse transform (which multiplies by n) gives the exact
/// product. Spectra used more than once are scaled once.
fn scale(a: &mut Spectrum) {
    let n = a[0].len() as u64;
    for (f, field) in FIELDS.iter().enumerate() {
        // Montgomery form of 2^64/n, times 2^64 again because `mul` divides by it.
        let k = field.mul(field.inverse(field.to_mont(n)), field.r2);
        for x in a[f].iter_mut() {
            *x = field.mul_lazy(*x, k);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Decimal conversion

/// Decimal digits in 10^19, the largest power of ten in a word.
const WORD_DIGITS: usize = 19;
const WORD_POWER: u64 = 10_000_000_000_000_000_000;

/// Levels whose power has fewer limbs than this are left to num-bigint (division and to_string).
const BARRETT_MIN_LIMBS: usize = 480;

/// Extra limbs of precision in the reciprocals, so that one Newton step from the previous level's
/// reciprocal lands within a few units.
const GUARD: usize = 2;

/// Corrections allowed after a Barrett quotient or a Newton step before falling back to
/// num-bigint's exact division; the error bounds need at most 3.
const MAX_CORRECTIONS: usize = 6;

/// One level of the tower: B_k = 10^digits, and what its Barrett divisions need.
struct Level {
    digits: usize,
    power: Vec<u64>,
    barrett: Option<Barrett>,
}

struct Barrett {
    /// floor(β^(2L + GUARD) / B) for B of L limbs.
    reciprocal: Vec<u64>,
    /// The reciprocal transformed at the length of the quotient product.
    reciprocal_spectrum: Spectrum,
    /// B transformed at the cyclic length used for remainders (`remainder_len`).
    power_spectrum: Spectrum,
}

/// Limbs of 10^digits.
fn power_limbs(digits: usize) -> usize {
    let bits = (digits as f64 * std::f64::consts::LOG2_10).floor() as usize;
    bits.saturating_add(1).div_ceil(64)
}

/// Cyclic length for remainders modulo B of L limbs: remainders are below 4B < β^(L+1), so
/// β^m − 1 with m ≥ L + 2 tells them (and their negatives) apart.
fn remainder_len(l: usize) -> usize {
    (l + 2).next_power_of_two()
}

/// Length of the quotient product (L + 1 limbs by L + 1 + GUARD).
fn quotient_len(l: usize) -> usize {
    (2 * l + GUARD + 2).next_power_of_two()
}

/// Limbs of B_k.
fn level_limbs(k: usize) -> usize {
    power_limbs(WORD_DIGITS << k)
}

/// Whether a division by B (L limbs) with a quotient of at most `ql` limbs uses only the top of
/// the reciprocal: worth it once that product needs a transform at most half as long.
fn short_quotient(l: usize, ql: usize) -> bool {
    (2 * ql + GUARD + 3).next_power_of_two() < quotient_len(l)
}

/// Estimated cost of `Kernel::divrem` by B (L limbs, Barrett) for a quotient of `ql` limbs.
fn divrem_cost(l: usize, ql: usize) -> f64 {
    let (nq, nr) = (quotient_len(l), remainder_len(l));
    let quotient = if short_quotient(l, ql) {
        mul_cost(ql, ql + GUARD + 2, false)
    } else {
        3.0 * 2.0 * transform_cost(nq) + recombine_cost(nq)
    };
    quotient + 3.0 * 2.0 * transform_cost(nr) + recombine_cost(nr) + linear_cost(8 * l)
}

/// Estimated cost of building level k of the tower (squaring, reciprocal, transforms).
fn level_cost(k: usize) -> f64 {
    let l = level_limbs(k);
    let prev = level_limbs(k - 1);
    let square = mul_cost(prev, prev, true);
    if l < BARRETT_MIN_LIMBS {
        return square;
    }
    let (nq, nr) = (quotient_len(l), remainder_len(l));
    let spectra = 3.0 * (transform_cost(nq) + transform_cost(nr));
    let reciprocal = if prev < BARRETT_MIN_LIMBS {
        small_mul_cost(l, 2 * l) * 3.0
    } else {
        let half = prev + GUARD + 1;
        mul_cost(half, half, true)
            + mul_cost(l, l + GUARD + 1, false)
            + mul_cost(l / 2 + 4, l / 2 + 4, false)
            + 3.0 * 2.0 * transform_cost(nr)
            + recombine_cost(nr)
            + linear_cost(10 * l)
    };
    square + spectra + reciprocal
}

/// The top level for a number of `limbs` limbs and the estimated cost of converting it that way;
/// None when the number is small enough for num-bigint's `to_string`.
///
/// The number is first written in base B_top by schoolbook long division. The highest level with
/// 2·L_top ≤ limbs gives the fewest such divisions, but its reciprocal costs more than a few
/// divisions, so a level or two lower is often cheaper overall: the cost model decides.
fn conversion_plan(limbs: usize) -> Option<(usize, f64)> {
    let mut highest = 0;
    while highest < 48 && level_limbs(highest + 1).saturating_mul(2) <= limbs {
        highest += 1;
    }
    (highest.saturating_sub(2)..=highest)
        .filter(|&k| level_limbs(k) >= BARRETT_MIN_LIMBS)
        .map(|k| (k, conversion_cost_with_top(limbs, k)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
}

/// Estimated cost of `Kernel::decimal` for a number of `limbs` limbs.
fn conversion_cost(limbs: usize) -> f64 {
    conversion_plan(limbs).map_or(to_string_cost(limbs), |(_, cost)| cost)
}

fn conversion_cost_with_top(limbs: usize, top: usize) -> f64 {
    let mut cost: f64 = (1..=top).map(level_cost).sum();
    // Long division passes, each leaving one base-B_top digit; the top chunk of each pass gives
    // a short quotient.
    let l = level_limbs(top);
    let mut rest = limbs;
    let mut parts = 1;
    while rest > l {
        let chunks = rest.div_ceil(l);
        let top_chunk = rest - (chunks - 1) * l;
        cost += divrem_cost(l, top_chunk + 1) + divrem_cost(l, l) * (chunks - 2) as f64;
        rest -= l;
        parts += 1;
    }
    let digits = (limbs as f64 * 64.0 * std::f64::consts::LOG10_2) as usize;
    let d = WORD_DIGITS << top;
    cost += emit_cost(digits.saturating_sub((parts - 1) * d).max(1), top - 1);
    cost + emit_cost(d, top - 1) * (parts - 1) as f64
}

/// Estimated cost of `Kernel::emit` for a part of `digits` digits below B_k².
fn emit_cost(digits: usize, k: usize) -> f64 {
    let l = level_limbs(k);
    if l < BARRETT_MIN_LIMBS {
        return to_string_cost(power_limbs(digits)) + linear_cost(digits / 8);
    }
    let d = WORD_DIGITS << k;
    if digits <= d {
        return linear_cost(l) + emit_cost(digits, k - 1);
    }
    let ql = power_limbs(digits - d) + 1;
    divrem_cost(l, ql) + emit_cost(digits - d, k - 1) + emit_cost(d, k - 1)
}

impl<M: Meter> Kernel<M> {
    /// The decimal expansion of x (normalized limbs, x > 0).
    fn decimal(&mut self, x: Vec<u64>) -> Result<String, M::Stop> {
        let Some((top, _)) = conversion_plan(x.len()) else {
            let s = to_biguint(&x).to_string();
            self.meter.work(to_string_cost(x.len()))?;
            return Ok(s);
        };
        let levels = self.tower(top)?;
        let digits = (x.len() as f64 * 64.0 * std::f64::consts::LOG10_2) as usize + 1;
        let mut out = String::with_capacity(digits);
        // x in base B_top, least significant part first: each is below B_top = B_{top-1}².
        let mut parts = Vec::new();
        let mut rest = x;
        while cmp_limbs(&rest, &levels[top].power) != Ordering::Less {
            let (q, r) = self.long_divrem(&rest, &levels[top])?;
            parts.push(r);
            rest = q;
        }
        self.emit(&rest, top - 1, false, &levels, &mut out)?;
        drop(rest);
        while let Some(part) = parts.pop() {
            self.emit(&part, top - 1, true, &levels, &mut out)?;
        }
        Ok(out)
    }

    /// B_0 ..= B_top, with Barrett data from the first level of at least BARRETT_MIN_LIMBS limbs.
    fn tower(&mut self, top: usize) -> Result<Vec<Level>, M::Stop> {
        let mut levels = vec![Level {
            digits: WORD_DIGITS,
            power: vec![WORD_POWER],
            barrett: None,
        }];
        for k in 1..=top {
            let prev = &levels[k - 1];
            let power = self.mul(&prev.power, &prev.power)?;
            let barrett = if power.len() >= BARRETT_MIN_LIMBS {
                let previous = prev
                    .barrett
                    .as_ref()
                    .map(|b| (prev.power.as_slice(), b.reciprocal.as_slice()));
                Some(self.barrett(&power, previous)?)
            } else {
                None
            };
            let digits = 2 * prev.digits;
            levels.push(Level {
                digits,
                power,
                barrett,
            });
        }
        Ok(levels)
    }

    /// Barrett data for B, whose square root's reciprocal is `previous` (if it has one).
    fn barrett(
        &mut self,
        b: &[u64],
        previous: Option<(&[u64], &[u64])>,
    ) -> Result<Barrett, M::Stop> {
        let l = b.len();
        let nr = remainder_len(l);
        let mut power_spectrum = self.forward(b, nr)?;
        scale(&mut power_spectrum);
        let reciprocal = match previous {
            None => {
                let numerator = BigUint::from(1u32) << (64 * (2 * l + GUARD));
                let r = numerator / to_biguint(b);
                self.meter.work(small_mul_cost(l, 2 * l) * 3.0)?;
                r.to_u64_digits()
            }
            Some((prev_power, prev_reciprocal)) => {
                self.newton_reciprocal(b, &power_spectrum, prev_power, prev_reciprocal)?
            }
        };
        let mut reciprocal_spectrum = self.forward(&reciprocal, quotient_len(l))?;
        scale(&mut reciprocal_spectrum);
        Ok(Barrett {
            reciprocal,
            reciprocal_spectrum,
            power_spectrum,
        })
    }

    /// floor(β^S / B), S = 2L + GUARD, for B = B'² from the reciprocal V' of B': the square of V'
    /// is correct to about L/2 limbs, one Newton step makes it correct to within a few units, and a
    /// remainder check makes it exact.
    fn newton_reciprocal(
        &mut self,
        b: &[u64],
        b_spectrum: &Spectrum,
        prev_power: &[u64],
        prev_reciprocal: &[u64],
    ) -> Result<Vec<u64>, M::Stop> {
        let l = b.len();
        let s = 2 * l + GUARD;
        let lp = prev_power.len();
        let sp = 2 * lp + GUARD;
        // V'² ≈ β^(2S') / B, so V0 = V'² / β^(2S' − S).
        let square = self.mul(prev_reciprocal, prev_reciprocal)?;
        let mut v = normalized(square.get(2 * sp - s..).unwrap_or(&[]).to_vec());
        drop(square);
        // e = β^S − B·V0; V1 = V0 + V0·e / β^S, from truncated factors: e has about 1.5L
        // limbs of which the top half matters, V0 about L of which the top half matters.
        let product = self.mul(b, &v)?;
        let (e, negative) = if product.len() > s {
            let mut e = product;
            sub_assign(&mut e, &power_of_beta(s));
            (e, true)
        } else {
            (power_minus(&product, s), false)
        };
        let cut_e = l.saturating_sub(2);
        let cut_v = lp + GUARD - 3;
        let e_top = e.get(cut_e..).unwrap_or(&[]);
        let v_top = v.get(cut_v..).unwrap_or(&[]).to_vec();
        let t = self.mul(&v_top, e_top)?;
        let t = normalized(t.get(s - cut_e - cut_v..).unwrap_or(&[]).to_vec());
        if negative {
            sub_assign(&mut v, &t);
            if !v.is_empty() {
                decrement(&mut v);
            }
        } else {
            add_at(&mut v, &t, 0);
        }
        // Exact correction from R = β^S − B·V1, which is a few multiples of B at most, so it is
        // known from its residue mod β^m − 1.
        let m = b_spectrum[0].len();
        let v_mod = if v.len() > m { fold(&v, m) } else { v.clone() };
        let mut spectrum = self.forward(&v_mod, m)?;
        drop(v_mod);
        pointwise(&mut spectrum, b_spectrum);
        let w = self.inverse(spectrum, true)?;
        let mut beta_s = vec![0u64; m];
        beta_s[s % m] = 1;
        let mut r = sub_mod(&beta_s, &w, m);
        self.meter.work(linear_cost(4 * m))?;
        let mut exact = false;
        if r.len() <= l + 1 {
            // R ≥ 0: V1 may be a few units low.
            for _ in 0..MAX_CORRECTIONS {
                if cmp_limbs(&r, b) == Ordering::Less {
                    exact = true;
                    break;
                }
                sub_assign(&mut r, b);
                increment(&mut v);
            }
        } else {
            // R < 0 and |R| = (β^m − 1) − r: V1 is a few units high. Each unit taken off V1
            // adds B to R.
            let mut deficit = power_minus(&r, m);
            decrement(&mut deficit);
            for _ in 0..MAX_CORRECTIONS {
                decrement(&mut v);
                if cmp_limbs(&deficit, b) != Ordering::Greater {
                    exact = true;
                    break;
                }
                sub_assign(&mut deficit, b);
            }
        }
        if !exact {
            // The error analysis rules this out; stay exact regardless.
            debug_assert!(false, "Newton reciprocal needed too many corrections");
            let numerator = BigUint::from(1u32) << (64 * s);
            v = (numerator / to_biguint(b)).to_u64_digits();
        }
        Ok(v)
    }

    /// (a / B, a mod B) for a < B·β^L, with B = level.power of L limbs.
    fn divrem(&mut self, a: &[u64], level: &Level) -> Result<(Vec<u64>, Vec<u64>), M::Stop> {
        let b = &level.power;
        if cmp_limbs(a, b) == Ordering::Less {
            return Ok((Vec::new(), a.to_vec()));
        }
        let Some(barrett) = &level.barrett else {
            let (q, r) = num_integer::Integer::div_rem(&to_biguint(a), &to_biguint(b));
            self.meter.work(small_mul_cost(b.len(), a.len()) * 3.0)?;
            return Ok((q.to_u64_digits(), r.to_u64_digits()));
        };
        let l = b.len();
        // q ≈ floor(a / β^(L−1)) · V / β^(L+1+GUARD): at most 2 below the true quotient, never
        // above it (every truncation rounds down).
        let a_top = &a[l - 1..];
        let mut q = if short_quotient(l, a_top.len()) {
            // Only the top ql + GUARD + 2 limbs of V matter for a quotient of ql limbs: the
            // rest changes the product by less than β^(L+1+GUARD) / β^(GUARD+2), so the
            // estimate drops by at most one more.
            let v = &barrett.reciprocal;
            let cut = v.len().saturating_sub(a_top.len() + GUARD + 2);
            let product = self.mul(a_top, &v[cut..])?;
            normalized(product.get(l + 1 + GUARD - cut..).unwrap_or(&[]).to_vec())
        } else {
            let mut spectrum = self.forward(a_top, barrett.reciprocal_spectrum[0].len())?;
            pointwise(&mut spectrum, &barrett.reciprocal_spectrum);
            let product = self.inverse(spectrum, false)?;
            normalized(product.get(l + 1 + GUARD..).unwrap_or(&[]).to_vec())
        };
        // r = a − q·B is below 3B, so it is known from its residue mod β^m − 1.
        let m = barrett.power_spectrum[0].len();
        let mut r = if q.is_empty() {
            a.to_vec()
        } else {
            let mut spectrum = self.forward(&q, m)?;
            pointwise(&mut spectrum, &barrett.power_spectrum);
            let w = self.inverse(spectrum, true)?;
            sub_mod(&fold(a, m), &w, m)
        };
        self.meter.work(linear_cost(4 * m))?;
        for _ in 0..MAX_CORRECTIONS {
            if cmp_limbs(&r, b) == Ordering::Less {
                return Ok((q, r));
            }
            sub_assign(&mut r, b);
            increment(&mut q);
        }
        // Barrett's bound (the estimate is at most 3 low) rules this out; stay exact regardless.
        debug_assert!(false, "Barrett quotient too far off");
        let (q, r) = num_integer::Integer::div_rem(&to_biguint(a), &to_biguint(b));
        Ok((q.to_u64_digits(), r.to_u64_digits()))
    }

    /// (x / B, x mod B) for any x, by schoolbook long division in base β^L with Barrett steps.
    fn long_divrem(&mut self, x: &[u64], level: &Level) -> Result<(Vec<u64>, Vec<u64>), M::Stop> {
        let l = level.power.len();
        let mut q = vec![0u64; x.len()];
        let mut r: Vec<u64> = Vec::new();
        let chunks = x.len().div_ceil(l);
        for j in (0..chunks).rev() {
            let chunk = &x[j * l..((j + 1) * l).min(x.len())];
            // a = r·β^L + chunk < B·β^L.
            let mut a = chunk.to_vec();
            if !r.is_empty() {
                a.resize(l, 0);
                a.extend_from_slice(&r);
            }
            normalize(&mut a);
            let (qj, rj) = self.divrem(&a, level)?;
            q[j * l..j * l + qj.len()].copy_from_slice(&qj);
            r = rj;
        }
        Ok((normalized(q), r))
    }

    /// Appends the digits of x < B_k² (B_{k+1}): padded to 2·digits(B_k) when `pad`.
    fn emit(
        &mut self,
        x: &[u64],
        k: usize,
        pad: bool,
        levels: &[Level],
        out: &mut String,
    ) -> Result<(), M::Stop> {
        let level = &levels[k];
        if level.barrett.is_none() {
            let s = to_biguint(x).to_string();
            if pad {
                out.extend(std::iter::repeat_n(
                    '0',
                    (2 * level.digits).saturating_sub(s.len()),
                ));
            }
            out.push_str(&s);
            return self
                .meter
                .work(to_string_cost(x.len()) + linear_cost(s.len() / 8));
        }
        if cmp_limbs(x, &level.power) == Ordering::Less {
            if pad {
                out.extend(std::iter::repeat_n('0', level.digits));
            }
            self.meter.work(linear_cost(level.power.len()))?;
            return self.emit(x, k - 1, pad, levels, out);
        }
        let (q, r) = self.divrem(x, level)?;
        self.emit(&q, k - 1, pad, levels, out)?;
        drop(q);
        self.emit(&r, k - 1, true, levels, out)
    }
}

/// β^s.
fn power_of_beta(s: usize) -> Vec<u64> {
    let mut v = vec![0u64; s + 1];
    v[s] = 1;
    v
}

// ---------------------------------------------------------------------------------------------
// Optional backend: malachite

/// [`factorial_decimal`] computed with malachite (cargo feature `malachite`, LGPL-3.0-only): the
/// backend that `factorial_decimal` uses when the feature is on.
///
/// Where malachite's own `factorial` or `to_string` would take at most about 50 ms, it is called
/// whole (a little faster). Beyond, the work goes in steps with a checkpoint between them: the
/// product is the built-in kernel's (the same prime factors, product trees and
/// square-and-multiply) with malachite's multiplication, and the decimal conversion is a divide and
/// conquer over powers of ten built here from malachite's division with a precomputed inverse,
/// whose pieces of at most a few thousand digits go to malachite's `to_string`.
///
/// Limitation: malachite has no progress hook or cancellation inside its operations, so the
/// checkpoint can only run between two of them. A whole call is one step, and so is every
/// multiplication, squaring, division and piece conversion; in steps, the longest is one operation
/// on numbers about half the size of n! (the top division of the conversion, the inverse of the top
/// power of ten, or the last squaring of the product). The longest gap between checkpoints measured
/// 29 ms at n = 150,000 and 27 ms at n = 1,000,000 on the 2-core reference machine, against 1 and
/// 6 ms for the built-in kernel (BENCHMARKS.md, "Worker compute"), so a stop comes that much later.
/// Malachite's own `to_string` of the whole number would run with no checkpoint at all for about
/// 0.3 s at n = 1,000,000.
#[cfg(feature = "malachite")]
pub fn factorial_decimal_malachite(
    n: u64,
    checkpoint: &mut dyn FnMut(Progress) -> bool,
) -> Result<String, Interrupted> {
    fast::factorial_decimal(n, checkpoint)
}

#[cfg(feature = "malachite")]
mod fast {
    use malachite::base::num::arithmetic::traits::{
        DivModPrecomputed, Factorial, ModPowerOf2, Pow, Square,
    };
    use malachite::base::num::basic::traits::{One, Zero};
    use malachite::base::num::logic::traits::SignificantBits;
    use malachite::Natural;

    use super::{sieve_cost, Factors, Interrupted, Meter, Metered, Progress, SMALL_TREE_LEAVES};

    /// Longest estimated cost (ns) of a product or conversion done in one malachite call, with no
    /// checkpoint inside: about the 50 ms at which a running job checks for a cancel. Below it,
    /// malachite's own `factorial` and `to_string` are a little faster than the steps below (about
    /// 3% at n = 150,000; BENCHMARKS.md, "Worker compute").
    const WHOLE_CALL_COST: f64 = 50e6;

    pub(super) fn factorial_decimal(
        n: u64,
        checkpoint: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<String, Interrupted> {
        factorial_decimal_in_steps_above(n, checkpoint, WHOLE_CALL_COST)
    }

    /// [`factorial_decimal`], doing the product or the conversion in one call when its estimated
    /// cost is at most `whole_call_cost`; tests pass 0 to check the steps.
    pub(super) fn factorial_decimal_in_steps_above(
        n: u64,
        checkpoint: &mut dyn FnMut(Progress) -> bool,
        whole_call_cost: f64,
    ) -> Result<String, Interrupted> {
        let mut meter = Metered::new(checkpoint);
        meter.report()?;
        let factors = Factors::new(n);
        let product = product_cost(&factors);
        let bits = result_bits(&factors);
        let conversion = conversion_cost(bits);
        meter.total = product + conversion;
        meter.work(sieve_cost(n))?;
        let x = if product <= whole_call_cost {
            let x = Natural::factorial(n);
            meter.work(product)?;
            x
        } else {
            let odd = odd_factorial(&factors, &mut meter)?;
            let limbs = odd.limb_count();
            let x = odd << factors.twos;
            meter.work(linear_cost(limbs))?;
            x
        };
        meter.phase = super::Phase::Decimal;
        let decimal = if conversion <= whole_call_cost {
            let decimal = x.to_string();
            meter.work(conversion)?;
            decimal
        } else {
            decimal(x, &mut meter)?
        };
        meter.finish()?;
        Ok(decimal)
    }

    // Cost model (estimated nanoseconds on the reference machine, fitted to malachite 0.14 there),
    // in the units of the built-in kernel's meter: it decides when the checkpoint is called and
    // what fraction it is told. Sizes are in 64-bit limbs.

    fn log2(x: f64) -> f64 {
        x.max(2.0).log2()
    }

    /// Multiplication of `s` by `l` limbs (s ≤ l).
    fn mul_cost(s: u64, l: u64) -> f64 {
        8.0 * l as f64 * log2(s as f64) + 50.0
    }

    fn square_cost(l: u64) -> f64 {
        5.0 * l as f64 * log2(l as f64) + 50.0
    }

    /// Division of at most twice `l` limbs by `l` limbs, with the divisor's inverse precomputed.
    fn division_cost(l: u64) -> f64 {
        20.0 * l as f64 * log2(l as f64) + 100.0
    }

    /// The precomputed inverse of an `l`-limb divisor.
    fn inverse_cost(l: u64) -> f64 {
        19.0 * l as f64 * log2(l as f64) + 100.0
    }

    /// malachite's `to_string` of `l` limbs.
    fn to_string_cost(l: u64) -> f64 {
        let lg = log2(l as f64);
        4.5 * l as f64 * lg * lg + 200.0
    }

    fn linear_cost(l: u64) -> f64 {
        l as f64
    }

    fn limbs(bits: f64) -> u64 {
        (bits / 64.0).ceil() as u64 + 1
    }

    // ---- The product

    /// Estimated bits of n!.
    fn result_bits(factors: &Factors) -> u64 {
        let odd_limbs = factors.odd_limbs().first().copied().unwrap_or(1) as u64;
        odd_limbs * 64 + factors.twos
    }

    /// (limbs of the product, estimated cost of `product`) for these leaves.
    fn tree_cost(leaves: &[u64]) -> (u64, f64) {
        if leaves.len() <= SMALL_TREE_LEAVES {
            let n = leaves.len() as f64;
            return (leaves.len().max(1) as u64, 2.0 * n * n + 20.0);
        }
        let (left, right) = leaves.split_at(leaves.len() / 2);
        let (a, ca) = tree_cost(left);
        let (b, cb) = tree_cost(right);
        (a + b, ca + cb + mul_cost(a.min(b), a.max(b)))
    }

    /// Estimated cost of `odd_factorial`.
    fn product_cost(factors: &Factors) -> f64 {
        let acc = factors.odd_limbs();
        let mut cost = 0.0;
        for (k, layer) in factors.layers.iter().enumerate() {
            let (pk, tree) = tree_cost(layer);
            cost += tree;
            if let Some(&prev) = acc.get(k + 1) {
                let prev = prev as u64;
                cost += square_cost(prev) + mul_cost(pk.min(2 * prev), pk.max(2 * prev));
            }
        }
        cost
    }

    /// The odd part of n!, as `Kernel::odd_factorial` computes it.
    fn odd_factorial(factors: &Factors, meter: &mut Metered) -> Result<Natural, Interrupted> {
        let mut acc = Natural::ONE;
        for layer in factors.layers.iter().rev() {
            let pk = product(layer, meter)?;
            acc = if acc == 1u32 {
                pk
            } else {
                let square = (&acc).square();
                meter.work(square_cost(acc.limb_count()))?;
                drop(acc);
                mul(square, pk, meter)?
            };
        }
        Ok(acc)
    }

    /// Product of the leaves by a balanced tree.
    fn product(leaves: &[u64], meter: &mut Metered) -> Result<Natural, Interrupted> {
        if leaves.len() <= SMALL_TREE_LEAVES {
            let mut p = Natural::ONE;
            for &w in leaves {
                p *= Natural::from(w);
            }
            let n = leaves.len() as f64;
            meter.work(2.0 * n * n + 20.0)?;
            return Ok(p);
        }
        let (left, right) = leaves.split_at(leaves.len() / 2);
        let a = product(left, meter)?;
        let b = product(right, meter)?;
        mul(a, b, meter)
    }

    fn mul(a: Natural, b: Natural, meter: &mut Metered) -> Result<Natural, Interrupted> {
        let (s, l) = (a.limb_count(), b.limb_count());
        let p = a * b;
        meter.work(mul_cost(s.min(l), s.max(l)))?;
        Ok(p)
    }

    // ---- The decimal conversion
    //
    // A number below 10^(d·2^K) is split by 10^(d·2^(K-1)) into two halves, each split again,
    // down to pieces of d digits (K and d chosen so that d ≤ LEAF_DIGITS), which malachite's
    // `to_string` converts; every piece but the leading one is padded with zeros to its width.
    // Since 10^m = 2^m·5^m, x = q·10^m + r is computed as (q, s) = divmod(x >> m, 5^m) and
    // r = s·2^m + (x mod 2^m): the divisor is 30% shorter than 10^m, as in GMP's `mpn_get_str`.
    // Each 5^m is divided by many times, so its inverse is computed once (malachite's
    // `DivModPrecomputed`).

    /// Widest piece handed to malachite's `to_string` whole. Its own conversion rebuilds its table
    /// of powers on every call, so shared powers and small pieces are slightly faster, and keep
    /// the steps between checkpoints short.
    const LEAF_DIGITS: u64 = 2_400;

    /// log10(2).
    const DIGITS_PER_BIT: f64 = std::f64::consts::LOG10_2;

    /// log2(5).
    const FIVE_BITS_PER_DIGIT: f64 = 2.321_928_094_887_362;

    /// (K, d): the levels of the split and the width in digits of the smallest pieces, for a
    /// number of `bits` bits.
    fn plan(bits: u64) -> (u32, u64) {
        // An upper bound of the number of digits.
        let digits = (bits as f64 * DIGITS_PER_BIT) as u64 + 1;
        let mut levels = 0;
        while digits.div_ceil(1 << levels) > LEAF_DIGITS {
            levels += 1;
        }
        (levels, digits.div_ceil(1 << levels))
    }

    /// Estimated cost of `decimal` for a number of `bits` bits.
    fn conversion_cost(bits: u64) -> f64 {
        let (levels, leaf) = plan(bits);
        let leaf_limbs = limbs(leaf as f64 / DIGITS_PER_BIT);
        let mut cost = (1u64 << levels) as f64 * (to_string_cost(leaf_limbs) + leaf as f64);
        for k in 0..levels {
            let five = limbs((leaf << k) as f64 * FIVE_BITS_PER_DIGIT);
            let splits = (1u64 << (levels - 1 - k)) as f64;
            cost += square_cost(five / 2) + inverse_cost(five);
            cost += splits * (division_cost(five) + linear_cost(4 * five));
        }
        cost
    }

    /// The powers of ten that split the pieces: level k divides pieces of `width << (k + 1)`
    /// digits into two of `width << k`.
    struct Tower {
        width: u64,
        fives: Vec<Natural>,
        inverses: Vec<<Natural as DivModPrecomputed>::Data>,
    }

    fn decimal(x: Natural, meter: &mut Metered) -> Result<String, Interrupted> {
        let (levels, width) = plan(x.significant_bits());
        let mut tower = Tower {
            width,
            fives: Vec::new(),
            inverses: Vec::new(),
        };
        let mut five = Natural::from(5u32).pow(width);
        meter.work(square_cost(five.limb_count()))?;
        for k in 0..levels {
            if k > 0 {
                let l = five.limb_count();
                five = (&five).square();
                meter.work(square_cost(l))?;
            }
            let inverse = <Natural as DivModPrecomputed>::precompute_div_mod_data(&five);
            meter.work(inverse_cost(five.limb_count()))?;
            tower.fives.push(five.clone());
            tower.inverses.push(inverse);
        }
        drop(five);
        let digits = (x.significant_bits() as f64 * DIGITS_PER_BIT) as usize + 1;
        let mut out = String::with_capacity(digits);
        tower.emit(x, levels as usize, false, &mut out, meter)?;
        Ok(out)
    }

    impl Tower {
        /// Appends `x` (below 10^(width·2^level)) to `out`, padded with zeros to exactly
        /// width·2^level digits if `padded`, else without leading zeros.
        fn emit(
            &self,
            x: Natural,
            level: usize,
            padded: bool,
            out: &mut String,
            meter: &mut Metered,
        ) -> Result<(), Interrupted> {
            if level == 0 {
                let l = x.limb_count();
                let s = x.to_string();
                if padded {
                    let width = usize::try_from(self.width).unwrap_or(usize::MAX);
                    out.extend(std::iter::repeat_n('0', width.saturating_sub(s.len())));
                }
                out.push_str(&s);
                meter.work(to_string_cost(l) + s.len() as f64)?;
                return Ok(());
            }
            let k = level - 1;
            let m = self.width << k;
            let l = x.limb_count();
            let hi = &x >> m;
            let low = x.mod_power_of_2(m);
            let (q, s) = hi.div_mod_precomputed(&self.fives[k], &self.inverses[k]);
            let r = (s << m) + low;
            meter.work(division_cost(self.fives[k].limb_count()) + linear_cost(4 * l))?;
            if !padded && q == Natural::ZERO {
                // The leading piece is shorter than this level: no zeros before it.
                return self.emit(r, k, false, out, meter);
            }
            self.emit(q, k, padded, out, meter)?;
            self.emit(r, k, true, out, meter)
        }
    }

    /// The conversion alone, for tests of its boundaries.
    #[cfg(test)]
    pub(super) fn decimal_of(limbs: Vec<u64>) -> String {
        let mut checkpoint = |_: Progress| true;
        let mut meter = Metered::new(&mut checkpoint);
        decimal(Natural::from_owned_limbs_asc(limbs), &mut meter).expect("never interrupted")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain_factorial(n: u64) -> BigUint {
        (1..=n).fold(BigUint::from(1u32), |acc, k| acc * k)
    }

    fn run(n: u64) -> String {
        factorial_decimal(n, &mut |_| true).expect("never interrupted")
    }

    fn run_with(
        n: u64,
        checkpoint: &mut dyn FnMut(Progress) -> bool,
    ) -> Result<String, Interrupted> {
        factorial_decimal(n, checkpoint)
    }

    #[test]
    fn small_values_are_exact() {
        assert_eq!(run(0), "1");
        assert_eq!(run(1), "1");
        assert_eq!(run(2), "2");
        assert_eq!(run(10), "3628800");
        assert_eq!(run(20), "2432902008176640000");
        assert_eq!(run(25), "15511210043330985984000000");
    }

    #[test]
    fn matches_plain_product() {
        for n in 0..=300 {
            assert_eq!(factorial(n), plain_factorial(n), "n = {n}");
        }
        for n in [1000, 5000, 12345] {
            assert_eq!(factorial(n), plain_factorial(n), "n = {n}");
        }
    }

    #[test]
    fn decimal_matches_num_bigint() {
        for n in [300, 1000, 3000, 5000, 12345, 20000] {
            assert_eq!(run(n), factorial(n).to_string(), "n = {n}");
        }
    }

    #[test]
    fn digit_count_of_100000_factorial() {
        assert_eq!(run(100_000).len(), 456_574);
    }

    #[test]
    fn fractions_are_monotone_and_end_at_one() {
        for n in [0, 5, 1000, 20000] {
            let mut seen = Vec::new();
            let mut phases = Vec::new();
            run_with(n, &mut |p| {
                seen.push(p.fraction);
                phases.push(p.phase);
                true
            })
            .expect("never interrupted");
            // The phases come in order: the product, then the conversion, which always runs.
            assert_eq!(phases.first(), Some(&Phase::Product), "n = {n}");
            assert_eq!(phases.last(), Some(&Phase::Decimal), "n = {n}");
            assert!(
                phases
                    .windows(2)
                    .all(|w| w[0] == w[1] || w[1] == Phase::Decimal),
                "n = {n}"
            );
            assert!(seen.len() >= 2, "n = {n}: {seen:?}");
            assert!(seen.iter().all(|f| (0.0..=1.0).contains(f)), "n = {n}");
            assert!(seen.windows(2).all(|w| w[0] <= w[1]), "n = {n}");
            assert_eq!(seen.last().copied(), Some(1.0), "n = {n}");
        }
    }

    #[test]
    fn interruption_stops_the_work() {
        assert_eq!(run_with(20000, &mut |_| false), Err(Interrupted));
        // n = 20000 makes 7 calls (the cost model, not timing, decides when).
        let mut calls = 0;
        let result = run_with(20000, &mut |_| {
            calls += 1;
            calls < 3
        });
        assert_eq!(result, Err(Interrupted));
        assert_eq!(calls, 3);
    }

    fn random_limbs(len: usize, seed: &mut u64) -> Vec<u64> {
        (0..len)
            .map(|_| {
                *seed ^= *seed << 13;
                *seed ^= *seed >> 7;
                *seed ^= *seed << 17;
                *seed
            })
            .collect()
    }

    #[test]
    fn transform_products_match_num_bigint() {
        let mut kernel = Kernel::new(Unmetered);
        let mut seed = 0x9e37_79b9_7f4a_7c15;
        for (la, lb) in [
            (900, 900),
            (1000, 3000),
            (950, 20000),
            (2048, 2048),
            (1500, 1),
        ] {
            let a = random_limbs(la, &mut seed);
            let b = random_limbs(lb, &mut seed);
            let Ok(p) = kernel.mul(&a, &b);
            assert_eq!(to_biguint(&p), to_biguint(&a) * to_biguint(&b), "{la}x{lb}");
            let Ok(s) = kernel.mul(&a, &a);
            assert_eq!(to_biguint(&s), to_biguint(&a) * to_biguint(&a), "{la}^2");
        }
        // All-ones words: the largest coefficients the transform must carry.
        let ones = vec![u64::MAX; 3000];
        let Ok(p) = kernel.mul(&ones, &ones);
        assert_eq!(to_biguint(&p), to_biguint(&ones) * to_biguint(&ones));
    }

    #[test]
    fn decimal_of_awkward_numbers() {
        let mut kernel = Kernel::new(Unmetered);
        let mut seed = 12345;
        let ten = BigUint::from(10u32);
        // Powers of ten and their neighbours sit on the boundaries of the tower (38_912 digits is
        // B_11); all-ones words stress the carries.
        let mut cases = vec![
            random_limbs(5000, &mut seed),
            vec![u64::MAX; 4100],
            (ten.pow(80_000) - 1u32).to_u64_digits(),
            ten.pow(80_000).to_u64_digits(),
            (ten.pow(38_912) * 7u32).to_u64_digits(),
        ];
        cases.push(random_limbs(2100, &mut seed));
        for x in cases {
            let want = to_biguint(&x).to_string();
            let Ok(got) = kernel.decimal(normalized(x));
            assert_eq!(got, want);
        }
    }

    #[cfg(feature = "malachite")]
    #[test]
    fn malachite_backend_matches_the_builtin() {
        for n in [0, 1, 2, 20, 25, 1000, 5000, 30000, 100_000] {
            let builtin = factorial_decimal_builtin(n, &mut |_| true).expect("never interrupted");
            let malachite =
                factorial_decimal_malachite(n, &mut |_| true).expect("never interrupted");
            assert_eq!(malachite, builtin, "n = {n}");
            // The steps, which larger inputs take, on the same inputs.
            let in_steps = fast::factorial_decimal_in_steps_above(n, &mut |_| true, 0.0)
                .expect("never interrupted");
            assert_eq!(in_steps, builtin, "n = {n}, in steps");
        }
    }

    #[cfg(feature = "malachite")]
    #[test]
    fn malachite_conversion_of_awkward_numbers() {
        let ten = BigUint::from(10u32);
        let mut seed = 4242;
        let mut cases = vec![
            random_limbs(5000, &mut seed),
            random_limbs(777, &mut seed),
            vec![u64::MAX; 4100],
        ];
        // Powers of ten and their neighbours, across the widths where the split gains a level
        // (the leaves are at most 2_400 digits wide) and where the leading piece is empty.
        for digits in [
            1, 19, 20, 2_399, 2_400, 2_401, 4_799, 4_800, 4_801, 9_600, 12_345, 38_400, 80_000,
        ] {
            let power = ten.pow(digits);
            cases.push((&power - 1u32).to_u64_digits());
            cases.push(power.to_u64_digits());
            cases.push((&power + 1u32).to_u64_digits());
            cases.push((&power * 7u32 + 123_456u32).to_u64_digits());
        }
        for x in cases {
            let want = to_biguint(&x).to_string();
            assert_eq!(fast::decimal_of(x), want);
        }
    }
}
