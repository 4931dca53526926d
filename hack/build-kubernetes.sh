#!/usr/bin/env bash
# Build kube-apiserver, kube-controller-manager, kube-scheduler and kubectl from the
# k8s.io/kubernetes Go module (version in hack/versions.env) into
# ~/.cache/kubetune/bin/kubernetes-<version>/. Idempotent: a finished build is reused.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

k8s_gomod() {
  local staging override module version
  # k8s.io/kubernetes requires its staging modules at v0.0.0 and replaces them with
  # ./staging/...; outside its repository every one must be replaced with a release.
  staging="$(go mod download -json "k8s.io/kubernetes@$KUBERNETES_VERSION" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p' \
    | xargs sed -n 's|^[[:space:]]*\(k8s.io/[^ ]*\) => ./staging/.*|\1|p')"
  [[ -n "$staging" ]] || die "read k8s.io/kubernetes@$KUBERNETES_VERSION go.mod" \
    "check GOPROXY ($(go env GOPROXY)) serves k8s.io/kubernetes $KUBERNETES_VERSION"
  echo "module kubetune.local/build/kubernetes"
  echo
  echo "go 1.23.0"
  echo
  echo "require k8s.io/kubernetes $KUBERNETES_VERSION"
  echo
  echo "replace ("
  for module in $staging; do
    version="$KUBERNETES_STAGING_VERSION"
    for override in $KUBERNETES_STAGING_OVERRIDES; do
      [[ "${override%@*}" == "$module" ]] && version="${override#*@}"
    done
    echo "	$module => $module $version"
  done
  echo ")"
}

k8s_ldflags() {
  local major minor pkg flags="-s -w"
  major="${KUBERNETES_VERSION#v}"; major="${major%%.*}"
  minor="${KUBERNETES_VERSION#v*.}"; minor="${minor%%.*}"
  # Same variables as kubernetes' hack/lib/version.sh, so /version reports the release.
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    flags+=" -X $pkg.gitVersion=$KUBERNETES_VERSION"
    flags+=" -X $pkg.gitMajor=$major -X $pkg.gitMinor=$minor"
    flags+=" -X $pkg.gitTreeState=clean"
    flags+=" -X $pkg.buildDate=1970-01-01T00:00:00Z"
  done
  echo "$flags"
}

step "kubernetes $KUBERNETES_VERSION (kube-apiserver, kube-controller-manager, kube-scheduler, kubectl)"
if tool_ready kubernetes "$KUBERNETES_VERSION"; then
  info "kubernetes $KUBERNETES_VERSION: cached in $(tool_dir kubernetes "$KUBERNETES_VERSION")"
  exit 0
fi
require_go
gomod="$(k8s_gomod)"
go_wrapper_build kubernetes "$KUBERNETES_VERSION" "$gomod" "$(k8s_ldflags)" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kubectl
