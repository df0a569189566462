#!/bin/sh
# `buf breaking` against main: once main has the v1 contract, a change that would break
# existing agents or clients (renumbered fields, removed RPCs, changed types) fails the checks.
set -eu
cd "$(dirname "$0")/.."
for ref in main origin/main; do
  if git rev-parse --verify --quiet "$ref^{commit}" >/dev/null && git cat-file -e "$ref:proto/nixfleet/v1" 2>/dev/null; then
    exec node_modules/.bin/buf breaking --against ".git#ref=$ref"
  fi
done
echo "buf breaking: no main branch with proto/nixfleet/v1 to compare against; skipped"
