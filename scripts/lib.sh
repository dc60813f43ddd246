# Shared by scripts/up.sh and scripts/test.sh: installs what Hutch needs on a
# Debian 12 machine (as root) and builds it. Idempotent; quiet when done.
set -euo pipefail

HUTCH_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MUSL_TARGET=x86_64-unknown-linux-musl

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

require_root() {
    [ "$(id -u)" = 0 ] || die "run this as root (Hutch mounts overlayfs and runs runc)"
}

# apt_install PKG... — installs the Debian packages that are missing.
apt_install() {
    local missing=()
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
    done
    if [ "${#missing[@]}" -gt 0 ]; then
        say "installing Debian packages: ${missing[*]}"
        DEBIAN_FRONTEND=noninteractive apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    fi
}

# Runtime needs: runc to run sandboxes, iproute2 and nftables for their
# networks, e2fsprogs for their disks (mkfs.ext4, e2fsck),
# mmdebstrap to build the default template; build needs: a C compiler
# (SQLite and zstd are compiled from source; the agent protocol needs no
# protoc). crates/cli/tests/quick_start.rs builds Hutch on a fresh Debian 12
# with exactly these.
install_runtime_deps() {
    apt_install runc iproute2 nftables e2fsprogs mmdebstrap ca-certificates curl gcc libc6-dev
}

install_rust() {
    if ! command -v cargo >/dev/null 2>&1; then
        [ -x "$HOME/.cargo/bin/cargo" ] || {
            say "installing the Rust toolchain (rustup)"
            curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal >/dev/null
        }
        export PATH="$HOME/.cargo/bin:$PATH"
    fi
    if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx "$MUSL_TARGET"; then
        say "adding the $MUSL_TARGET target (the in-sandbox agent is a static binary)"
        rustup target add "$MUSL_TARGET" >/dev/null
    fi
}

# Builds the CLI/server (release) and the static agent.
build_hutch() {
    say "building hutch"
    (cd "$HUTCH_ROOT" && cargo build --release --locked -p hutch-cli --bin hutch \
        && cargo build --locked -p hutch-envd --profile agent --target "$MUSL_TARGET")
}

install_hutch() {
    install -D -m 0755 "$HUTCH_ROOT/target/release/hutch" /usr/local/bin/hutch
    install -D -m 0755 "$HUTCH_ROOT/target/$MUSL_TARGET/agent/hutch-envd" /usr/local/lib/hutch/hutch-envd
}
