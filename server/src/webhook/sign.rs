//! Signatures of the Standard Webhooks specification: `v1,` and the base64 HMAC-SHA256, keyed with the
//! secret's bytes, of `<webhook-id>.<webhook-timestamp>.<body>`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Shortest secret accepted, in bytes (the specification asks for 24 to 64).
pub const MIN_SECRET_BYTES: usize = 24;
/// Longest secret accepted, in bytes.
pub const MAX_SECRET_BYTES: usize = 64;

/// A webhook signing key.
#[derive(Clone)]
pub struct Signer {
    key: Vec<u8>,
}

impl Signer {
    /// The key of a secret written `whsec_<base64>`; the reason names what is wrong, never the secret.
    pub fn parse(secret: &str) -> Result<Self, String> {
        let encoded = secret
            .strip_prefix("whsec_")
            .ok_or("must start with whsec_ (then the key in base64)")?;
        let key = STANDARD
            .decode(encoded)
            .map_err(|_| "the part after whsec_ must be base64")?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(format!(
                "the key must be {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes (it is {})",
                key.len()
            ));
        }
        Ok(Self { key })
    }

    /// The `webhook-signature` header of a message.
    pub fn sign(&self, id: &str, timestamp: u64, body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.key).expect("HMAC takes any key size");
        mac.update(id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_as_the_specification_example() {
        // The example of the Standard Webhooks reference libraries.
        let signer = Signer::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            signer.sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn secrets_are_checked_without_echoing_them() {
        for bad in [
            "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
            "whsec_!!!",
            "whsec_c2hvcnQ=",
        ] {
            let reason = Signer::parse(bad).err().unwrap();
            assert!(!reason.contains(bad), "{reason}");
        }
    }
}
