#!/usr/bin/env bash
# Build ollama (the server, `ollama serve`) at OLLAMA_VERSION from its Go module into
# ~/.cache/kubetune/bin/ollama-<version>/ollama. The serving tests run it as the Ollama
# container of ModelDeployment pods (the local pod runner starts it as a real process), so the
# version must be the one `spec.ollamaImage` defaults to (ollama/ollama:<version without v>).
#
# CPU only, with cgo (Ollama's llama.cpp runner is C++ compiled by cgo; no cmake, no GPU
# libraries): about 8.5 minutes on 2 cores, a ~30 MB binary. The build runs in a writable copy
# of the module (the module cache is read-only and the cgo build writes beside the sources).
# Without the -X flag /api/version would say 0.0.0.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

name=ollama
version="$OLLAMA_VERSION"
step "ollama $version"
dest="$(tool_dir "$name" "$version")"
if tool_ready "$name" "$version"; then
  info "ollama $version: cached in $dest"
  exit 0
fi
require_go
command -v g++ >/dev/null 2>&1 || die "find a C++ compiler" "install g++ (apt-get install g++): Ollama's runner is built with cgo"
log="$KUBETUNE_LOG_DIR/build-$name-$version.log"
work="$KUBETUNE_BUILD_DIR/$name-$version"
mkdir -p "$KUBETUNE_LOG_DIR" "$KUBETUNE_BIN_CACHE" "$KUBETUNE_BUILD_DIR"
info "ollama $version: building (log: $log)"
start=$SECONDS
(
  set -e
  src="$(go mod download -json "github.com/ollama/ollama@$version" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')"
  rm -rf "$work"
  cp -r "$src" "$work"
  chmod -R u+w "$work"
  cd "$work"
  tmp="$(mktemp -d "$KUBETUNE_BIN_CACHE/.$name-$version.XXXXXX")"
  export CGO_ENABLED=1 GOFLAGS="-mod=mod ${GOFLAGS:-}"
  go build -trimpath -ldflags "-X=github.com/ollama/ollama/version.Version=${version#v} -s -w" -o "$tmp/ollama" .
  test -x "$tmp/ollama"
  chmod 755 "$tmp"
  date -u +%FT%TZ >"$tmp/.complete"
  rm -rf "$dest"
  mv "$tmp" "$dest"
  rm -rf "$work"
) >"$log" 2>&1 || {
  rm -rf "$KUBETUNE_BIN_CACHE/.$name-$version."*
  tail -n 30 "$log" >&2
  die "build ollama $version" "read $log; check that the Go proxy is reachable (GOPROXY=$(go env GOPROXY)) and that g++ is installed, then rerun hack/install-tools.sh"
}
info "ollama $version: built in $((SECONDS - start)) s -> $dest"
