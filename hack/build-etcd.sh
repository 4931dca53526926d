#!/usr/bin/env bash
# Build etcd from go.etcd.io/etcd/server/v3 (version in hack/versions.env) into
# ~/.cache/kubetune/bin/etcd-<version>/etcd. Debian's etcd-server (3.4) is older than
# the 3.5 line Kubernetes 1.32 is tested against, so we build the server ourselves.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "etcd $ETCD_VERSION"
gomod="module kubetune.local/build/etcd

go 1.23.0

require go.etcd.io/etcd/server/v3 $ETCD_VERSION"
# The wrapper's own main package is the etcd command: etcdmain.Main is what etcd's
# root module main.go calls.
mkdir -p "$KUBETUNE_BUILD_DIR/etcd-$ETCD_VERSION/cmd/etcd"
cat >"$KUBETUNE_BUILD_DIR/etcd-$ETCD_VERSION/cmd/etcd/main.go" <<'GO'
// Command etcd runs go.etcd.io/etcd/server/v3's etcdmain, like etcd's own main.go.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
go_wrapper_build etcd "$ETCD_VERSION" "$gomod" "-s -w" kubetune.local/build/etcd/cmd/etcd
