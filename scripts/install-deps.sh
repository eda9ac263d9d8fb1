#!/usr/bin/env bash
# Installs the Debian 12 packages FaultMaven needs, skipping what is already there.
#   scripts/install-deps.sh [build|test|bench]...   (default: build)
# build: compiler and libraries to build and run `faultmaven serve`
# test:  build + the servers and tools the test suite starts (PostgreSQL, Redis, Sentinel,
#        promtool, busted, tmux for the interactive REPL spec, Node.js for s3rver)
# bench: test + nginx with the Lua module and wrk, FAISS and hnswlib: the peers of bench/
set -euo pipefail

build_pkgs=(build-essential cmake pkg-config liblua5.4-dev lua5.4 libmicrohttpd-dev libsqlite3-dev
  libpq-dev libhiredis-dev libcurl4-openssl-dev libjansson-dev libsodium-dev libssl-dev
  libedit-dev libhyperscan-dev lua-cjson ca-certificates curl)
test_pkgs=(lua-busted lua-socket lua-check postgresql redis-server redis-sentinel prometheus tmux)
bench_pkgs=(nginx libnginx-mod-http-lua wrk sqlite3 ripgrep libfaiss-dev libhnswlib-dev)

want=()
groups=("$@")
[ ${#groups[@]} -eq 0 ] && groups=(build)
for g in "${groups[@]}"; do
  case "$g" in
    build) want+=("${build_pkgs[@]}") ;;
    test) want+=("${build_pkgs[@]}" "${test_pkgs[@]}") ;;
    bench) want+=("${build_pkgs[@]}" "${test_pkgs[@]}" "${bench_pkgs[@]}") ;;
    *) echo "install-deps: unknown group '$g' (build, test, bench)" >&2; exit 2 ;;
  esac
done
# Node.js and npm (for s3rver) only when no node is on PATH: a machine may bring its own.
if [[ " ${groups[*]} " == *" test "* || " ${groups[*]} " == *" bench "* ]] && ! command -v npm >/dev/null; then
  want+=(nodejs npm)
fi

# s3rver (the S3-compatible server of spec/storage) from npm into $HOME/.cache/faultmaven, where
# spec/helpers finds it; pinned, and skipped when that version is already there.
S3RVER_VERSION=3.7.1
install_s3rver() {
  [[ " ${groups[*]} " == *" test "* || " ${groups[*]} " == *" bench "* ]] || return 0
  local dir="${HOME}/.cache/faultmaven"
  if [ -x "$dir/node_modules/.bin/s3rver" ] &&
     grep -q "\"version\": \"$S3RVER_VERSION\"" "$dir/node_modules/s3rver/package.json" 2>/dev/null; then
    return 0
  fi
  echo "install-deps: installing s3rver $S3RVER_VERSION into $dir (npm)" >&2
  mkdir -p "$dir"
  npm install --silent --no-audit --no-fund --prefix "$dir" "s3rver@$S3RVER_VERSION" >/dev/null
}

missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  install_s3rver
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null || { echo "install-deps: need root or sudo to install: ${missing[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install-deps: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
install_s3rver
