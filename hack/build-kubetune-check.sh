#!/usr/bin/env bash
# Build kubetune-check (hack/kubetune-check/) into
# ~/.cache/kubetune/bin/kubetune-check-<source hash>/kubetune-check.
#
# The GitOps and kind tests check kubetune's objects and files with the libraries those tools
# run themselves: kstatus (sigs.k8s.io/cli-utils, what Flux and kpt read), Argo CD's Lua health
# checks under gopher-lua (the interpreter Argo CD embeds), and kind's own config loader and
# validation (sigs.k8s.io/kind). Pure Go, CGO off, about 1-2 minutes cold.
#
# Unlike the other tools this one has its own source, so its cache key is a hash of that source
# (go.mod, go.sum, *.go): an edit builds a new binary beside the old. kubetune_dev.tools
# computes the same hash to find it. Library versions are pinned in hack/kubetune-check/go.mod
# (and go.sum); the ones named in hack/versions.env must agree, which this script checks.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

src="$HACK_DIR/kubetune-check"

# source_hash: sha256 over "name\0content\0" of go.mod, go.sum and *.go in name order; the
# first 12 hex digits. Keep in step with kubetune_dev.tools.kubetune_check_version.
source_hash() {
  (
    cd "$src"
    for f in $(LC_ALL=C ls go.mod go.sum *.go | LC_ALL=C sort); do
      printf '%s\0' "$f"
      cat "$f"
      printf '\0'
    done
  ) | sha256sum | cut -c1-12
}

version="src-$(source_hash)"
step "kubetune-check $version (kind $KIND_VERSION, cli-utils $CLI_UTILS_VERSION, gopher-lua $GOPHER_LUA_VERSION)"
for pin in "sigs.k8s.io/kind $KIND_VERSION" "sigs.k8s.io/cli-utils $CLI_UTILS_VERSION" \
  "github.com/yuin/gopher-lua $GOPHER_LUA_VERSION"; do
  grep -q "^[[:space:]]*$pin\$" "$src/go.mod" \
    || die "check kubetune-check's pins" "hack/kubetune-check/go.mod must require $pin (hack/versions.env); run 'go get ${pin/ /@}' in hack/kubetune-check"
done

dest="$(tool_dir kubetune-check "$version")"
if tool_ready kubetune-check "$version"; then
  info "kubetune-check $version: cached in $dest"
  exit 0
fi
require_go
log="$KUBETUNE_LOG_DIR/build-kubetune-check-$version.log"
mkdir -p "$KUBETUNE_LOG_DIR" "$KUBETUNE_BIN_CACHE"
info "kubetune-check $version: building (log: $log)"
start=$SECONDS
(
  cd "$src" \
    && export CGO_ENABLED=0 GOFLAGS="-mod=readonly" \
    && tmp="$(mktemp -d "$KUBETUNE_BIN_CACHE/.kubetune-check-$version.XXXXXX")" \
    && go build -trimpath -ldflags "-s -w" -o "$tmp/kubetune-check" . \
    && test -x "$tmp/kubetune-check" \
    && chmod 755 "$tmp" \
    && date -u +%FT%TZ >"$tmp/.complete" \
    && rm -rf "$dest" \
    && mv "$tmp" "$dest"
) >"$log" 2>&1 || {
  rm -rf "$KUBETUNE_BIN_CACHE/.kubetune-check-$version."*
  tail -n 30 "$log" >&2
  die "build kubetune-check $version" "read $log; check that the Go proxy is reachable (GOPROXY=$(go env GOPROXY)) and that hack/kubetune-check/go.sum lists every module (go mod tidy there), then rerun hack/build-kubetune-check.sh"
}
info "kubetune-check $version: built in $((SECONDS - start)) s -> $dest"
