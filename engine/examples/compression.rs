//! Measures how zstd and lz4 keep the factorial's decimal outputs, to choose how stored outputs are
//! compressed (engine/src/output.rs): `cargo run --release -p herald-engine --example compression`.

use std::time::Instant;

fn main() {
    println!("| n | digits | codec | stored / original | compress MB/s | decompress MB/s |");
    println!("|---|---|---|---|---|---|");
    for n in [10_000u64, 100_000, 1_000_000] {
        let digits =
            herald_models::compute::factorial_decimal(n, &mut |_| true).expect("never interrupted");
        let text = format!("\"{digits}\"");
        let bytes = text.as_bytes();
        let mb = bytes.len() as f64 / 1e6;
        for level in [1, 3] {
            let clock = Instant::now();
            let packed = zstd::bulk::compress(bytes, level).unwrap();
            let packing = clock.elapsed().as_secs_f64();
            let clock = Instant::now();
            let back = zstd::stream::decode_all(&packed[..]).unwrap();
            let unpacking = clock.elapsed().as_secs_f64();
            assert_eq!(back, bytes);
            row(
                n,
                bytes.len(),
                &format!("zstd -{level}"),
                packed.len(),
                mb / packing,
                mb / unpacking,
            );
        }
        let clock = Instant::now();
        let packed = lz4_flex::compress_prepend_size(bytes);
        let packing = clock.elapsed().as_secs_f64();
        let clock = Instant::now();
        let back = lz4_flex::decompress_size_prepended(&packed).unwrap();
        let unpacking = clock.elapsed().as_secs_f64();
        assert_eq!(back, bytes);
        row(
            n,
            bytes.len(),
            "lz4",
            packed.len(),
            mb / packing,
            mb / unpacking,
        );
    }
}

fn row(n: u64, len: usize, codec: &str, stored: usize, packing: f64, unpacking: f64) {
    println!(
        "| {n} | {} | {codec} | {:.1} % | {packing:.0} | {unpacking:.0} |",
        len - 2,
        100.0 * stored as f64 / len as f64
    );
}
