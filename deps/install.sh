#!/bin/sh
# install.sh: installs, with apt-get, the Debian packages lcluster builds and tests with,
# only when one is missing. Run as root on Debian. `deps/install.sh bench` adds what
# bench/ drives (wrk, nginx, hyperfine); `deps/install.sh fuzz` adds clang for libFuzzer.
set -eu

pkgs="build-essential cmake clang-format libluajit-5.1-dev luajit libuv1-dev lua-cjson-dev lua-busted lua-check node-llhttp"
# spec/service_spec.lua and spec/deploy_spec.lua: systemd-socket-activate and systemd-analyze
# (systemd), a real HAProxy and nginx, and PyYAML to parse deploy/kubernetes.yaml.
pkgs="$pkgs systemd haproxy nginx-light python3-yaml"
# require('luv') (lualib/io/): lua-luv's static library and headers.
pkgs="$pkgs lua-luv-dev"
# runtime/tlsmod/tls.c links OpenSSL 3; spec/tls_spec.lua runs the openssl command and curl.
pkgs="$pkgs libssl-dev openssl curl"
for extra in "$@"; do
  case "$extra" in
    bench) pkgs="$pkgs wrk nginx-light hyperfine nodejs npm" ;;
    fuzz) pkgs="$pkgs clang libclang-rt-14-dev" ;;
    sanitize) pkgs="$pkgs libclang-rt-14-dev" ;;
    *) echo "install.sh: unknown extra '$extra' (bench, fuzz, sanitize)" >&2; exit 2 ;;
  esac
done

missing=""
for p in $pkgs; do
  if [ "$p" = nodejs ] && command -v node >/dev/null 2>&1; then continue; fi
  if [ "$p" = npm ] && command -v npm >/dev/null 2>&1; then continue; fi
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  case "$status" in
    *"install ok installed"*) ;;
    *) missing="$missing $p" ;;
  esac
done

if [ -n "$missing" ]; then
  echo "deps/install.sh: installing$missing"
  if [ "$(id -u)" != 0 ]; then
    echo "deps/install.sh: not root; install these yourself:$missing" >&2
    exit 1
  fi
  apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing
fi

# bench/deploy/run drives Node's cluster the PM2 way (`pm2 reload`): PM2 from npm into
# bench/.pm2 (git-ignored), for the bench extra only; builds and tests never need it.
for extra in "$@"; do
  if [ "$extra" = bench ] && [ ! -x "$(dirname "$0")/../bench/.pm2/node_modules/.bin/pm2" ]; then
    echo "deps/install.sh: npm install pm2 into bench/.pm2"
    npm install --prefix "$(dirname "$0")/../bench/.pm2" --no-audit --no-fund pm2@7
  fi
done
