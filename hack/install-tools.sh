#!/usr/bin/env bash
# Install every tool the dev cluster and the tests need, at the versions pinned in
# hack/versions.env:
#   apt:  prometheus (+ promtool), openssl, util-linux (unshare, mount), iproute2 (the local
#         runner's pod-IP route), g++ (Ollama's cgo runner)
#   Go:   kube-apiserver, kube-controller-manager, kube-scheduler, kubectl, etcd, kwok, helm,
#         ollama-template (Ollama's template package, for the Modelfile parity tests),
#         ollama (the server the serving tests run as ModelDeployment pods' Ollama container)
#         kubetune-check (kstatus, Argo CD Lua health and kind config checks; hack/kubetune-check)
# Go builds are cached in ~/.cache/kubetune/bin/<name>-<version>/ (never in the repo), so a
# second run takes seconds. Usage: hack/install-tools.sh [--skip-apt]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

skip_apt=false
for arg in "$@"; do
  case "$arg" in
    --skip-apt) skip_apt=true ;;
    *) die "parse arguments" "usage: hack/install-tools.sh [--skip-apt]" ;;
  esac
done

install_apt_packages() {
  step "apt packages: $APT_PACKAGES"
  local missing=() pkg
  for pkg in $APT_PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed' \
      || missing+=("$pkg")
  done
  if ((${#missing[@]} == 0)); then
    info "already installed"
    return 0
  fi
  if $skip_apt; then
    die "apt packages" "install ${missing[*]} yourself, or rerun without --skip-apt"
  fi
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || die "apt packages" "run as root or install sudo (missing: ${missing[*]})"
    sudo=(sudo)
  fi
  info "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq \
    || die "apt-get update" "check network access to the Debian mirrors in /etc/apt/sources.list*"
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null \
    || die "apt-get install ${missing[*]}" "run 'apt-get install ${missing[*]}' by hand and read its error"
}

start=$SECONDS
install_apt_packages
require_go
"$HACK_DIR/build-kubernetes.sh"
"$HACK_DIR/build-etcd.sh"
"$HACK_DIR/build-kwok.sh"
"$HACK_DIR/build-helm.sh"
"$HACK_DIR/build-ollama-template.sh"
"$HACK_DIR/build-ollama.sh"
"$HACK_DIR/build-kubetune-check.sh"

step "tools ready in $((SECONDS - start)) s"
for name_version in "kubernetes $KUBERNETES_VERSION" "etcd $ETCD_VERSION" \
  "kwok $KWOK_VERSION" "helm $HELM_VERSION" "ollama-template $OLLAMA_VERSION" \
  "ollama $OLLAMA_VERSION"; do
  # shellcheck disable=SC2086
  info "$(tool_dir $name_version)"
done
info "prometheus: $(command -v prometheus), promtool: $(command -v promtool)"
