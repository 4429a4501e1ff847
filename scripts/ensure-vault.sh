#!/usr/bin/env bash
# Makes sure a real vault binary is available for tests and `make dev`: the
# vault on PATH when it is 1.15 or newer, else bin/vault built from Vault's own
# Go module (scripts/vault pins vault v1.21.0, sdk v0.20.0, api v1.22.0).
# The first build downloads ~4 GB of modules and compiles for ~10 minutes on
# 2 cores; later builds reuse Go's caches.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -z "${KEYBROKER_BUILD_VAULT:-}" ] && command -v vault >/dev/null 2>&1; then
  v=$(vault version 2>/dev/null | sed -n 's/^Vault v\([0-9]*\)\.\([0-9]*\)\..*/\1 \2/p')
  if [ -n "$v" ] && { read -r major minor <<<"$v"; [ "$major" -gt 1 ] || { [ "$major" -eq 1 ] && [ "$minor" -ge 15 ]; }; }; then
    echo "using $(command -v vault) ($(vault version))"
    exit 0
  fi
fi

if [ -x bin/vault ] && [ bin/vault -nt scripts/vault/go.mod ] && [ bin/vault -nt scripts/vault/main.go ]; then
  echo "using bin/vault ($(bin/vault version))"
  exit 0
fi

echo "building bin/vault from Vault's Go module (first time: ~10 minutes)..."
mkdir -p bin
(cd scripts/vault && CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o ../../bin/vault .)
echo "built bin/vault ($(bin/vault version))"
