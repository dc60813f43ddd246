#!/usr/bin/env bash
# Quick start: installs what Hutch needs, builds and installs it, then runs
# `hutch serve` in the foreground with the default `base` template (built
# from Debian packages on first start; later starts reuse it).
#
#   ./scripts/up.sh [hutch serve flags...]
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
require_root
install_runtime_deps
install_rust
build_hutch
install_hutch
say "starting hutch serve (API key in /var/lib/hutch/api-key)"
exec /usr/local/bin/hutch serve "$@"
