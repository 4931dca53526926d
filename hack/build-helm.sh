#!/usr/bin/env bash
# Build helm from helm.sh/helm/v3 into ~/.cache/kubetune/bin/helm-<version>/helm.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "helm $HELM_VERSION"
gomod="module kubetune.local/build/helm

go 1.22.0

require helm.sh/helm/v3 $HELM_VERSION"
go_wrapper_build helm "$HELM_VERSION" "$gomod" \
  "-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION -X helm.sh/helm/v3/internal/version.gitTreeState=clean" \
  helm.sh/helm/v3/cmd/helm
