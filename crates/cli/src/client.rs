//! The REST client every client command uses: the server URL, the API key,
//! and errors in words (the server's own message, or why it cannot be
//! reached).

use std::path::{Path, PathBuf};

use anyhow::{Context, anyhow};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Header carrying the API key.
const API_KEY_HEADER: &str = "X-API-Key";

/// A connection to one Hutch server.
pub(crate) struct Api {
    base: String,
    key: String,
    http: reqwest::Client,
}

/// The server answered with an error status.
#[derive(Debug)]
pub(crate) struct ServerReplied {
    pub message: String,
    /// The HTTP status, when the error was the answer's (not an event
    /// of a stream the server had accepted).
    pub status: Option<u16>,
}

impl ServerReplied {
    /// Whether `e` is the server answering 404.
    pub fn is_not_found(e: &anyhow::Error) -> bool {
        e.downcast_ref::<ServerReplied>()
            .is_some_and(|r| r.status == Some(404))
    }
}

impl std::fmt::Display for ServerReplied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ServerReplied {}

impl Api {
    /// `server` is the base URL; the key comes from `HUTCH_API_KEY`, else
    /// from `<data_dir>/api-key`.
    pub fn new(server: &str, data_dir: &Path) -> anyhow::Result<Api> {
        let base = server.trim_end_matches('/').to_string();
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(crate::UsageError(format!(
                "invalid --server '{server}': expected a URL such as http://127.0.0.1:3000"
            ))
            .into());
        }
        let key = api_key(data_dir)?;
        Ok(Api {
            base,
            key,
            http: reqwest::Client::new(),
        })
    }

    /// The server's base URL, without a trailing slash.
    /// The API key this client sends.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header(API_KEY_HEADER, &self.key)
    }

    /// A request to a sandbox through the server's front door: without the
    /// API key, which must never reach a sandbox.
    pub fn sandbox_request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}{path}", self.base))
    }

    /// Sends; an error status becomes [`ServerReplied`], a transport
    /// failure a sentence saying the server cannot be reached.
    pub async fn send(&self, req: reqwest::RequestBuilder) -> anyhow::Result<reqwest::Response> {
        let resp = req.send().await.map_err(|e| self.transport_error(&e))?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let message = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|v| {
                v.get("message")
                    .and_then(|m| m.as_str())
                    .map(str::to_string)
            })
            .unwrap_or_else(|| {
                let text = text.trim();
                if text.is_empty() {
                    format!("the server answered HTTP {status}")
                } else {
                    format!("the server answered HTTP {status}: {text}")
                }
            });
        Err(ServerReplied {
            message,
            status: Some(status),
        }
        .into())
    }

    pub async fn get_json<T: DeserializeOwned>(&self, path: &str) -> anyhow::Result<T> {
        let resp = self.send(self.request(reqwest::Method::GET, path)).await?;
        decode(resp).await
    }

    pub async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &impl Serialize,
    ) -> anyhow::Result<T> {
        let resp = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        decode(resp).await
    }

    pub async fn delete(&self, path: &str) -> anyhow::Result<()> {
        self.send(self.request(reqwest::Method::DELETE, path))
            .await?;
        Ok(())
    }

    /// Why the server could not be reached, in one sentence.
    pub fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        if e.is_connect() || e.is_timeout() || e.is_request() {
            anyhow!(
                "cannot reach the Hutch server at {}: {} — is `hutch serve` running?",
                self.base,
                root_cause(e)
            )
        } else {
            anyhow!(
                "request to the Hutch server at {} failed: {}",
                self.base,
                root_cause(e)
            )
        }
    }
}

async fn decode<T: DeserializeOwned>(resp: reqwest::Response) -> anyhow::Result<T> {
    let text = resp.text().await.context("reading the server's answer")?;
    serde_json::from_str(&text)
        .with_context(|| format!("unexpected answer from the server: {text}"))
}

/// The innermost cause of an error, as words ("connection refused").
pub(crate) fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur: &(dyn std::error::Error + 'static) = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    if let Some(io) = cur.downcast_ref::<std::io::Error>() {
        use std::io::ErrorKind as K;
        let words = match io.kind() {
            K::ConnectionRefused => Some("connection refused"),
            K::ConnectionReset => Some("connection reset"),
            K::TimedOut => Some("timed out"),
            K::NotFound => Some("no such file or directory"),
            _ => None,
        };
        if let Some(w) = words {
            return w.to_string();
        }
    }
    let text = cur.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_lowercase(),
        None => text,
    }
}

fn api_key(data_dir: &Path) -> anyhow::Result<String> {
    if let Ok(key) = std::env::var("HUTCH_API_KEY")
        && !key.trim().is_empty()
    {
        return Ok(key.trim().to_string());
    }
    let path: PathBuf = data_dir.join("api-key");
    match std::fs::read_to_string(&path) {
        Ok(key) if !key.trim().is_empty() => Ok(key.trim().to_string()),
        _ => Err(anyhow!(
            "no API key: set HUTCH_API_KEY or run on the server host where {} is readable",
            path.display()
        )),
    }
}

/// `s` percent-encoded for use as one URL path segment or query value.
pub(crate) fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_segments() {
        assert_eq!(encode("base-1.0_x~"), "base-1.0_x~");
        assert_eq!(encode("a/b c&d=é"), "a%2Fb%20c%26d%3D%C3%A9");
    }
}
