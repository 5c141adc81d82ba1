#!/usr/bin/env bash
# Installs what building and testing Quintet needs on a fresh Debian machine: the C
# toolchain bits, the MariaDB and Redis servers and clients, and the tansu Kafka broker.
set -euo pipefail

need_apt=()
command -v cc >/dev/null || need_apt+=(build-essential)
command -v cmake >/dev/null || need_apt+=(cmake)
command -v pkg-config >/dev/null || need_apt+=(pkg-config)
# benches/compare links the system's libzstd rather than compiling zstd's C source.
[ -f /usr/include/zstd.h ] || need_apt+=(libzstd-dev)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
command -v mariadb >/dev/null || need_apt+=(mariadb-client)
command -v redis-server >/dev/null || need_apt+=(redis-server)
command -v curl >/dev/null || need_apt+=(curl)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
fi

if ! command -v tansu >/dev/null && [ ! -x "$HOME/.cargo/bin/tansu" ]; then
  echo "install-deps: cargo install tansu (about 11 minutes)"
  cargo install tansu --locked --features dynostore,libsql
fi

# schemathesis (PyPI) checks the running APIs against their OpenAPI specs in CI.
command -v st >/dev/null || pip install -q schemathesis

if ! command -v cargo-nextest >/dev/null; then
  echo "install-deps: cargo install cargo-nextest"
  cargo install cargo-nextest --locked
fi
