//! Wire types shared by the Hutch server, the CLI and the in-sandbox agent.
//!
//! * [`envd`] — the agent's Connect RPC services (`process.Process`,
//!   `filesystem.Filesystem`), generated from `proto/`, wire-compatible with
//!   the E2B agent so the official SDKs work unmodified.
//! * [`boot`] — the host → agent contract: how the agent is configured when
//!   its sandbox starts and when a sandbox is handed to a user.
//! * [`api`] — the REST API's request bodies and answers, E2B-compatible
//!   where E2B has the route, shared by the server and the CLI.

pub mod api;
pub mod boot;
pub mod exit;
pub mod relay;

/// Generated message types, service traits and clients.
#[allow(clippy::all, missing_docs, unused_imports, dead_code)]
pub mod envd {
    connectrpc::include_generated!();
}

/// The TCP port the E2B SDKs address the agent on (`E2b-Sandbox-Port`).
pub const ENVD_PORT: u16 = 49983;

/// Whether two secrets (tokens, keys, signatures) are equal, compared in
/// time independent of where they differ (`subtle`); every secret check of
/// the server, the CLI and the agent goes through it.
pub fn same_secret(a: impl AsRef<[u8]>, b: impl AsRef<[u8]>) -> bool {
    use subtle::ConstantTimeEq;
    a.as_ref().ct_eq(b.as_ref()).into()
}

#[cfg(test)]
mod secret_tests {
    use super::same_secret;

    #[test]
    fn equal_secrets_only() {
        assert!(same_secret("s3cret", "s3cret"));
        assert!(same_secret(b"", b""));
        assert!(!same_secret("s3cret", "s3creT"));
        assert!(!same_secret("s3cret", "s3cret2"));
        assert!(!same_secret("", "x"));
    }
}
