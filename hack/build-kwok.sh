#!/usr/bin/env bash
# Build kwok (simulated nodes and pods) from sigs.k8s.io/kwok into
# ~/.cache/kubetune/bin/kwok-<version>/kwok.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "kwok $KWOK_VERSION"
gomod="module kubetune.local/build/kwok

go 1.24.0

require sigs.k8s.io/kwok $KWOK_VERSION"
go_wrapper_build kwok "$KWOK_VERSION" "$gomod" \
  "-s -w -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" \
  sigs.k8s.io/kwok/cmd/kwok
