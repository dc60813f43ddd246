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

/// A fresh API key: `hutch_` and 32 hex digits (128 random bits).
pub(crate) fn new_api_key() -> String {
    let bytes: [u8; 16] = rand::rng().random();
    format!("hutch_{}", hex::encode(bytes))
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
        let key = new_api_key();
        assert!(key.starts_with("hutch_"));
        assert_eq!(key.len(), 6 + 32);
        assert!(key[6..].bytes().all(|b| b.is_ascii_hexdigit()));
    }
}
