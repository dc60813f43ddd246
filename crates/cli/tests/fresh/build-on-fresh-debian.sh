#!/usr/bin/env bash
# Proves that the quick start's set-up step is complete: in a clean Debian 12
# root file system (mmdebstrap minbase, cached as a tarball), it runs the
# package installation of scripts/lib.sh — exactly what `scripts/up.sh` runs
# before building — and then builds the whole workspace there, with the
# host's Rust toolchain and crate sources mounted read-only and nothing else
# from the host. A package the build needs that lib.sh does not install
# fails this script.
#
#   build-on-fresh-debian.sh CACHE_DIR
#
# Needs root, mmdebstrap, unshare and the Debian mirror
# ($HUTCH_DEBIAN_MIRROR, default http://deb.debian.org/debian).
set -euo pipefail

cache=$(realpath "$1")
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/../../../.." && pwd)
mirror=${HUTCH_DEBIAN_MIRROR:-http://deb.debian.org/debian}
rustup_home=${RUSTUP_HOME:-$HOME/.rustup}
cargo_home=${CARGO_HOME:-$HOME/.cargo}
toolchain=$(rustup show active-toolchain | cut -d' ' -f1)

mkdir -p "$cache"
base="$cache/fresh-debian12-minbase.tar"
if [ ! -f "$base" ]; then
    echo "fresh machine: building a Debian 12 minbase root file system"
    # The output's format follows its name: a tarball.
    mmdebstrap --mode=root --variant=minbase --quiet bookworm "$cache/partial-minbase.tar" "$mirror"
    mv "$cache/partial-minbase.tar" "$base"
fi
# Downloaded packages are kept between runs (only the .debs: apt's view of
# what is installed starts from scratch every time).
mkdir -p "$cache/fresh-debian12-apt-archives/partial"

work=$(mktemp -d "$cache/fresh-root.XXXXXX")
cleanup() { rm -rf --one-file-system "$work"; }
trap cleanup EXIT
tar -C "$work" -xf "$base"
cp /etc/resolv.conf "$work/etc/resolv.conf"
mkdir -p "$work/src/hutch" "$work/opt/rustup" "$work/opt/cargo/registry" "$work/build"

# Mounts live in a private mount namespace: they vanish with it.
unshare --mount --propagation private -- bash -euo pipefail -c '
    work=$1 repo=$2 rustup_home=$3 cargo_home=$4 toolchain=$5 cache=$6
    mount -t proc proc "$work/proc"
    mount --rbind /dev "$work/dev"
    mount --bind "$cache/fresh-debian12-apt-archives" "$work/var/cache/apt/archives"
    for m in "$repo:src/hutch" "$rustup_home:opt/rustup" "$cargo_home/registry:opt/cargo/registry"; do
        mount --bind "${m%%:*}" "$work/${m#*:}"
        mount -o remount,bind,ro "$work/${m#*:}"
    done
    chroot "$work" /usr/bin/env -i \
        HOME=/root TERM=dumb LANG=C.UTF-8 \
        PATH=/opt/rustup/toolchains/$toolchain/bin:/usr/sbin:/usr/bin:/sbin:/bin \
        RUSTUP_HOME=/opt/rustup CARGO_HOME=/opt/cargo CARGO_TARGET_DIR=/build \
        bash -euo pipefail -c "
            cd /src/hutch
            source scripts/lib.sh
            install_runtime_deps
            say \"building the workspace on a fresh Debian 12\"
            cargo build --locked --offline --workspace
            cargo build --locked --offline -p hutch-envd --profile agent --target \$MUSL_TARGET
            echo \"fresh machine: OK\"
        "
' fresh "$work" "$repo" "$rustup_home" "$cargo_home" "$toolchain" "$cache"
