//! Helpers for Hutch's integration tests.
//!
//! Everything here uses the real tools the product uses (runc, skopeo, umoci, mmdebstrap) and
//! real images; expensive results (binaries, image fixtures) are cached under the cargo target
//! directory and guarded by file locks, so parallel test binaries build each of them once.
//! Helpers panic with a message naming what failed instead of returning errors.
//!
//! - [`TestDir`]: a short, unique directory under `<target>/ht/`, unmounted and removed on drop.
//! - [`wait_until`] / [`wait_until_async`]: poll a condition with a deadline.
//! - [`hutch_bin`] / [`envd_bin`]: workspace binaries, built on first use.
//! - [`busybox_image`] / [`debian_image`]: OCI image layouts whose config matches the cases in
//!   `environment.md` (see [`IMAGE_ENV`]); [`as_oci_archive`] / [`as_docker_archive`] convert them.
//! - [`TestServer`]: a `hutch serve` on a free port with its own data directory; with
//!   [`TestServer::start_without_sandboxes`], one that needs no agent, for tests that start no
//!   sandbox.
//! - [`HostResources`] / [`assert_no_leaks`]: what a data directory's sandboxes hold on the
//!   host, counted from the kernel; [`FakeInternet`]: an HTTP server beyond the host, in a
//!   network namespace of its own, for egress tests.
//! - [`Registry`]: a real OCI registry (`docker-registry`) on a free port, anonymous or with
//!   basic or token authentication; [`multi_arch_layout`] builds multi-platform images for it.
//! - [`Postgres`]: a private PostgreSQL cluster on a free loopback port, removed on drop.
//! - [`TestNode`]: a `hutch node` on a free port with its own data directory and secret, for
//!   joining a control plane (`hutch control`) with a [`ClusterSecret`].

mod bins;
mod fakenet;
mod fixtures;
mod layout;
mod leaks;
mod mounts;
mod node;
mod paths;
mod postgres;
mod registry;
mod sdk;
mod server;
mod testdir;
mod wait;

pub use bins::{envd_bin, hutch_bin};
pub use fakenet::{FAKE_INTERNET_BODY, FAKE_INTERNET_PORT, FakeInternet};
pub use fixtures::{
    FIXTURE_VERSION, IMAGE_CMD_BUSYBOX, IMAGE_CMD_DEBIAN, IMAGE_ENV, IMAGE_TAG, IMAGE_WORKDIR,
    MYTOOL_OUTPUT, as_docker_archive, as_oci_archive, busybox_image, debian_image,
};
pub use leaks::{HostResources, assert_no_leaks, network_force_clean, wait_torn_down};
pub use mounts::{mounts_under, runc_force_clean, unmount_all_under};
pub use node::{ClusterSecret, TestNode};
pub use paths::{cache_dir, target_dir, workspace_root};
pub use postgres::{POSTGRES_USER, Postgres};
pub use registry::{
    REGISTRY_PASSWORD, REGISTRY_USERNAME, Registry, RegistryAuthMode, multi_arch_layout,
};
pub use sdk::{
    E2B_PYTHON_KEY_CHECK, E2B_PYTHON_NEW, E2B_PYTHON_OLD, MCP_PYTHON, ScriptLines,
    assert_script_ok, e2b_js, e2b_python, e2b_python_run, mcp_client, python_with,
    run_e2b_python_script,
};
pub use server::{STAND_IN_ENVD, TestServer, http};
pub use testdir::TestDir;
pub use wait::{wait_until, wait_until_async};

/// A TCP port on 127.0.0.1 that was free a moment ago (bound to port 0, then released).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap_or_else(|e| panic!("free_port: cannot bind 127.0.0.1:0: {e}"));
    listener
        .local_addr()
        .unwrap_or_else(|e| panic!("free_port: local_addr: {e}"))
        .port()
}
