//! E2B's paging of listings: `limit` items at most (100 when absent, 1000
//! at most), starting after the item whose key is `nextToken`; when more
//! follow, the key of the page's last item is the next page's token, in the
//! `X-Next-Token` header.

use axum::http::{HeaderMap, HeaderValue};

use crate::error::ApiError;

/// Largest page.
const MAX_PAGE: usize = 1000;
/// Page size when `limit` is not given.
const DEFAULT_PAGE: usize = 100;

/// The page of `items` (in their order) that `limit` and `next_token` ask
/// for, and the headers to answer with; `key` is what a token names an
/// item by.
pub(super) fn page<T>(
    mut items: Vec<T>,
    limit: Option<usize>,
    next_token: Option<&str>,
    key: impl Fn(&T) -> &str,
) -> Result<(Vec<T>, HeaderMap), ApiError> {
    let limit = match limit {
        None => DEFAULT_PAGE,
        Some(0) => return Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) => n.min(MAX_PAGE),
    };
    if let Some(token) = next_token.filter(|t| !t.is_empty()) {
        let Some(at) = items.iter().position(|i| key(i) == token) else {
            return Err(ApiError::bad_request(format!(
                "invalid nextToken '{token}'"
            )));
        };
        items.drain(..=at);
    }
    let more = items.len() > limit;
    items.truncate(limit);
    let mut headers = HeaderMap::new();
    if more
        && let Some(last) = items.last()
        && let Ok(v) = HeaderValue::from_str(key(last))
    {
        headers.insert("x-next-token", v);
    }
    Ok((items, headers))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("i{i}")).collect()
    }

    #[test]
    fn pages_follow_their_tokens() {
        let (first, h) = page(ids(5), Some(2), None, String::as_str).unwrap();
        assert_eq!(first, ["i0", "i1"]);
        let token = h["x-next-token"].to_str().unwrap().to_owned();
        assert_eq!(token, "i1");
        let (second, h) = page(ids(5), Some(2), Some(&token), String::as_str).unwrap();
        assert_eq!(second, ["i2", "i3"]);
        let (last, h2) = page(ids(5), Some(2), Some("i3"), String::as_str).unwrap();
        assert_eq!(last, ["i4"]);
        assert!(h.contains_key("x-next-token"));
        assert!(!h2.contains_key("x-next-token"));
        let (all, h) = page(ids(5), None, None, String::as_str).unwrap();
        assert_eq!(all.len(), 5);
        assert!(h.is_empty());
        assert!(page(ids(5), Some(0), None, String::as_str).is_err());
        let e = page(ids(5), None, Some("nope"), String::as_str).unwrap_err();
        assert!(
            format!("{e:?}").contains("invalid nextToken 'nope'"),
            "{e:?}"
        );
    }
}
