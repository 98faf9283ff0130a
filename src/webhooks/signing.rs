//! Standard Webhooks 1.0 signatures: `v1,` + base64 of HMAC-SHA256 over
//! `"{webhook-id}.{webhook-timestamp}.{body}"`, keyed with the subscription's secret.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;

/// Prefix of secrets in the Standard Webhooks format (the rest is base64).
pub const SECRET_PREFIX: &str = "whsec_";

/// Bytes of key material in a generated secret.
const GENERATED_KEY_BYTES: usize = 32;

/// The HMAC key of a subscription.
#[derive(Clone)]
pub struct SigningKey(Vec<u8>);

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Key material never reaches logs.
        f.write_str("SigningKey(..)")
    }
}

impl SigningKey {
    /// A `whsec_<base64>` secret is decoded; any other string is used as raw bytes. Errors say
    /// what is wrong with a `whsec_` secret.
    pub fn from_secret(secret: &str) -> Result<SigningKey, String> {
        match secret.strip_prefix(SECRET_PREFIX) {
            Some(b64) => {
                let bytes = STANDARD.decode(b64).map_err(|e| {
                    format!("a whsec_ secret must be base64 after the prefix ({e})")
                })?;
                if bytes.is_empty() {
                    return Err("a whsec_ secret must not be empty".into());
                }
                Ok(SigningKey(bytes))
            }
            None if secret.is_empty() => Err("the secret must not be empty".into()),
            None => Ok(SigningKey(secret.as_bytes().to_vec())),
        }
    }

    /// The `webhook-signature` header value for one attempt.
    pub fn sign(&self, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.0) {
            Ok(m) => m,
            Err(_) => unreachable_key_length(),
        };
        mac.update(msg_id.as_bytes());
        mac.update(b".");
        mac.update(timestamp.to_string().as_bytes());
        mac.update(b".");
        mac.update(body);
        format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
    }
}

#[cold]
fn unreachable_key_length() -> ! {
    unreachable!("HMAC-SHA256 takes keys of any length")
}

/// A new random secret in the Standard Webhooks format.
pub fn generate_secret() -> String {
    let mut key = [0u8; GENERATED_KEY_BYTES];
    rand::rngs::OsRng.fill_bytes(&mut key);
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproduces_the_published_test_vector() {
        // The vector every Standard Webhooks and Svix library tests against.
        let key = SigningKey::from_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            key.sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn other_secrets_are_raw_bytes() {
        let raw = SigningKey::from_secret("hmac_s3cret").unwrap();
        assert_eq!(raw.0, b"hmac_s3cret");
        // The same bytes given base64-encoded with the prefix sign identically.
        let encoded =
            SigningKey::from_secret(&format!("whsec_{}", STANDARD.encode("hmac_s3cret"))).unwrap();
        assert_eq!(raw.sign("msg_1", 1, b"{}"), encoded.sign("msg_1", 1, b"{}"));
    }

    #[test]
    fn bad_secrets_are_refused() {
        assert!(SigningKey::from_secret("whsec_not base64!")
            .unwrap_err()
            .contains("base64"));
        assert!(SigningKey::from_secret("whsec_").is_err());
        assert!(SigningKey::from_secret("").is_err());
    }

    #[test]
    fn generated_secrets_decode_to_fresh_keys() {
        let (a, b) = (generate_secret(), generate_secret());
        assert_ne!(a, b);
        assert!(a.starts_with("whsec_"));
        assert_eq!(SigningKey::from_secret(&a).unwrap().0.len(), 32);
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SigningKey::from_secret("topsecret").unwrap();
        assert!(!format!("{key:?}").contains("topsecret"));
    }
}
