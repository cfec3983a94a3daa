//! Stored outputs: each output is kept once, under the SHA-256 of its own text (content-addressed),
//! and job records refer to it by that digest; a large one is kept compressed with zstd.
//!
//! Why zstd and not lz4: on the factorial's decimal outputs zstd at level 1 keeps 40.6 % of the
//! bytes at 500+ MB/s, where lz4 keeps 77 to 91 % (decimal digits carry 3.32 bits in 8; lz4 has no
//! entropy coder to use the 4.7 bits left, zstd's Huffman stage does). `cargo run --release -p
//! herald-engine --example compression` measures both (BENCHMARKS.md, "Stored outputs").
//!
//! The digest is of the output itself, not of the input, so it is right for every model (one whose
//! results may not be shared still stores each distinct output once) and two inputs with equal
//! outputs share one copy.

use herald_protocol::{Json, RecordError};
use sha2::{Digest, Sha256};

/// Outputs shorter than this are stored as they are: compressing them saves too little to pay for
/// the work (and the tag byte).
pub const COMPRESS_FROM: usize = 1024;

/// Outputs at least this long are encoded and decoded on the blocking pool: hashing and compressing
/// one takes over a millisecond, too long for an async runtime thread.
const OFF_RUNTIME_FROM: usize = 64 * 1024;

/// zstd's level: 1 is the fastest and, on decimal digits, also the smallest (level 3 kept 42 to 47 %).
const ZSTD_LEVEL: i32 = 1;

/// First byte of a stored output that follows as plain JSON text.
const PLAIN: u8 = b'j';
/// First byte of a stored output that follows as one zstd frame of its JSON text.
const ZSTD: u8 = b'z';

/// An output ready to be stored.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// The SHA-256 of the output's JSON text, in hex: the key it is stored under.
    pub digest: String,
    /// The stored form: a tag byte, then the text, plain or compressed.
    pub blob: Vec<u8>,
}

/// The digest an output is stored under (see [`Encoded::digest`]).
pub fn digest(output: &Json) -> String {
    format!("{:x}", Sha256::digest(output.get().as_bytes()))
}

/// Encodes `output` for storage: its digest, and its text compressed when that saves at least an
/// eighth.
pub fn encode(output: &Json) -> Encoded {
    let text = output.get().as_bytes();
    let mut blob = Vec::new();
    if text.len() >= COMPRESS_FROM {
        if let Ok(compressed) = zstd::bulk::compress(text, ZSTD_LEVEL) {
            if compressed.len() < text.len() - text.len() / 8 {
                blob.reserve_exact(compressed.len() + 1);
                blob.push(ZSTD);
                blob.extend_from_slice(&compressed);
            }
        }
    }
    if blob.is_empty() {
        blob.reserve_exact(text.len() + 1);
        blob.push(PLAIN);
        blob.extend_from_slice(text);
    }
    Encoded {
        digest: digest(output),
        blob,
    }
}

/// Reads a stored output back.
pub fn decode(blob: &[u8]) -> Result<Json, RecordError> {
    let damaged = || RecordError::Inconsistent("a stored output is damaged");
    let text = match blob.split_first() {
        Some((&PLAIN, text)) => std::str::from_utf8(text).map_err(|_| damaged())?.to_owned(),
        Some((&ZSTD, compressed)) => {
            let bytes = zstd::stream::decode_all(compressed).map_err(|_| damaged())?;
            String::from_utf8(bytes).map_err(|_| damaged())?
        }
        _ => return Err(damaged()),
    };
    herald_protocol::model::json(&text).map_err(|_| damaged())
}

/// [`encode`], on the blocking pool for a large output.
pub async fn encode_async(output: &Json) -> Encoded {
    if output.get().len() < OFF_RUNTIME_FROM {
        return encode(output);
    }
    let output = output.clone();
    match tokio::task::spawn_blocking(move || encode(&output)).await {
        Ok(encoded) => encoded,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// [`digest`], on the blocking pool for a large output.
pub async fn digest_async(output: &Json) -> String {
    if output.get().len() < OFF_RUNTIME_FROM {
        return digest(output);
    }
    let output = output.clone();
    match tokio::task::spawn_blocking(move || digest(&output)).await {
        Ok(digest) => digest,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// [`decode`], on the blocking pool for a large blob.
pub async fn decode_async(blob: Vec<u8>) -> Result<Json, RecordError> {
    if blob.len() < OFF_RUNTIME_FROM / 4 {
        return decode(&blob);
    }
    match tokio::task::spawn_blocking(move || decode(&blob)).await {
        Ok(decoded) => decoded,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herald_protocol::model::json_string;

    #[test]
    fn small_outputs_stay_plain_and_large_decimal_ones_shrink() {
        let small = json_string("3628800");
        let encoded = encode(&small);
        assert_eq!(encoded.blob[0], PLAIN);
        assert_eq!(decode(&encoded.blob).unwrap(), small);
        // Decimal digits without a pattern, as a factorial's are.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let digits: String = (0..200_000)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                char::from(b'0' + (state % 10) as u8)
            })
            .collect();
        let large = json_string(&digits);
        let encoded = encode(&large);
        assert_eq!(encoded.blob[0], ZSTD);
        assert!(
            encoded.blob.len() < large.get().len() / 2,
            "{} of {}",
            encoded.blob.len(),
            large.get().len()
        );
        assert_eq!(decode(&encoded.blob).unwrap(), large);
        assert_eq!(encoded.digest, digest(&large));
        assert_ne!(encoded.digest, digest(&small));
    }

    #[test]
    fn a_damaged_blob_is_an_error() {
        for blob in [&b""[..], b"x123", b"z\x00\x01", b"j{"] {
            assert!(decode(blob).is_err(), "{blob:?}");
        }
    }
}
