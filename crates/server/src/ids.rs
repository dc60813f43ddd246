//! Random identifiers and the API key.

use rand::Rng;

const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// A sandbox or template id: 20 characters from `[a-z0-9]`, like E2B's.
pub(crate) fn new_id() -> String {
    let mut rng = rand::rng();
    (0..20)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// A build id: a random UUID, the shape E2B's SDKs parse a `buildID` as.
pub(crate) fn new_build_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// Whether `s` is a UUID (a build id, as a `name:<buildID>` reference
/// gives it).
pub(crate) fn looks_like_build_id(s: &str) -> bool {
    uuid::Uuid::try_parse(s).is_ok()
}

/// What an API key starts with (E2B's shape, which the SDKs check).
pub(crate) const API_KEY_PREFIX: &str = "e2b_";

/// What an access token (for `Authorization: Bearer`) starts with.
pub(crate) const ACCESS_TOKEN_PREFIX: &str = "sk_e2b_";

/// How many hex digits follow a key's or token's prefix.
pub(crate) const SECRET_HEX_CHARS: usize = 40;

/// 40 lowercase hex digits (160 random bits), E2B's length.
fn secret_hex() -> String {
    let bytes: [u8; 20] = rand::rng().random();
    hex::encode(bytes)
}

/// A fresh API key: `e2b_` and 40 lowercase hex digits, the shape every
/// official SDK release accepts with its key validation on.
pub(crate) fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", secret_hex())
}

/// A fresh access token: `sk_e2b_` and 40 lowercase hex digits.
pub(crate) fn new_user_access_token() -> String {
    format!("{ACCESS_TOKEN_PREFIX}{}", secret_hex())
}

/// A fresh access token for E2B's CLI login: shaped as a JWT whose payload
/// says it expires at `exp` (Unix seconds) — E2B's CLI refreshes tokens
/// that do not say — with 160 random bits as its third part. Hutch checks
/// it as any key: by its hash; the payload is for the CLI to read.
pub(crate) fn new_cli_token(exp: i64) -> String {
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s);
    format!(
        "{}.{}.{}",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(&format!(r#"{{"iss":"hutch","exp":{exp}}}"#)),
        secret_hex()
    )
}

/// A sandbox's agent access token: 32 hex digits (128 random bits).
pub(crate) fn new_access_token() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    hex::encode(bytes)
}

/// Whether `s` has the shape of an id (`[a-z0-9]+`, at most 64).
pub(crate) fn looks_like_id(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_have_the_documented_shape() {
        let id = new_id();
        assert_eq!(id.len(), 20);
        assert!(looks_like_id(&id));
        assert_ne!(new_id(), id);
        for (secret, prefix) in [
            (new_api_key(), "e2b_"),
            (new_user_access_token(), "sk_e2b_"),
        ] {
            let hex = secret.strip_prefix(prefix).expect(prefix);
            assert_eq!(hex.len(), 40, "{secret}");
            assert!(
                hex.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
                "{secret}"
            );
        }
        assert_ne!(new_api_key(), new_api_key());
    }
}
