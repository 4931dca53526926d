# Shared helpers for hack/*.sh. Source it; it sources versions.env.
# shellcheck shell=bash

HACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "$HACK_DIR/.." && pwd)"
# shellcheck source=versions.env
source "$HACK_DIR/versions.env"

KUBETUNE_CACHE="${KUBETUNE_CACHE:-$HOME/.cache/kubetune}"
KUBETUNE_BIN_CACHE="$KUBETUNE_CACHE/bin"
KUBETUNE_BUILD_DIR="$KUBETUNE_CACHE/build"
KUBETUNE_LOG_DIR="$KUBETUNE_CACHE/logs"

step() { printf '==> %s\n' "$*" >&2; }
info() { printf '    %s\n' "$*" >&2; }

# die STEP FIX: stop with a message naming the failed step and what to do about it.
die() {
  printf 'ERROR in step "%s"\n  fix: %s\n' "$1" "$2" >&2
  exit 1
}

# tool_dir NAME VERSION: the version-keyed cache folder holding a tool's binaries.
tool_dir() { printf '%s/%s-%s' "$KUBETUNE_BIN_CACHE" "$1" "$2"; }

# tool_ready NAME VERSION: true when a previous build finished (stamp written last).
tool_ready() { [[ -f "$(tool_dir "$1" "$2")/.complete" ]]; }

require_go() {
  command -v go >/dev/null 2>&1 \
    || die "find the Go toolchain" "install Go >= 1.23 (https://go.dev/dl) and put it on PATH"
}

# go_wrapper_build NAME VERSION GOMOD_BODY LDFLAGS PKG... :
# write a throwaway module whose go.mod is GOMOD_BODY, then `go build` each package
# into the cache folder for NAME-VERSION. Builds into a temp folder and renames it
# into place, so an interrupted build never leaves a half-filled cache entry.
go_wrapper_build() {
  local name="$1" version="$2" gomod="$3" ldflags="$4"
  shift 4
  local dest tmp work log
  dest="$(tool_dir "$name" "$version")"
  if tool_ready "$name" "$version"; then
    info "$name $version: cached in $dest"
    return 0
  fi
  require_go
  work="$KUBETUNE_BUILD_DIR/$name-$version"
  log="$KUBETUNE_LOG_DIR/build-$name-$version.log"
  mkdir -p "$work" "$KUBETUNE_LOG_DIR" "$KUBETUNE_BIN_CACHE"
  printf '%s\n' "$gomod" >"$work/go.mod"
  # A blank-import file keeps the required packages in the module graph for `go mod tidy`.
  {
    echo "//go:build tools"
    echo "package tools"
    echo "import ("
    local pkg
    # The wrapper's own packages (kubetune.local/...) are already seen by `go mod tidy`.
    for pkg in "$@"; do [[ "$pkg" == kubetune.local/* ]] || echo "	_ \"$pkg\""; done
    echo ")"
  } >"$work/tools.go"
  info "$name $version: building $* (log: $log)"
  local start=$SECONDS
  # `set -e` does not apply inside a subshell whose status is tested, so chain with &&.
  (
    cd "$work" \
      && export CGO_ENABLED=0 GOFLAGS="-mod=mod ${GOFLAGS:-}" \
      && go mod tidy \
      && tmp="$(mktemp -d "$KUBETUNE_BIN_CACHE/.$name-$version.XXXXXX")" \
      && echo "go build $*" \
      && go build -trimpath -ldflags "$ldflags" -o "$tmp/" "$@" \
      && for pkg in "$@"; do test -x "$tmp/$(basename "$pkg")" || exit 1; done \
      && chmod 755 "$tmp" \
      && date -u +%FT%TZ >"$tmp/.complete" \
      && rm -rf "$dest" \
      && mv "$tmp" "$dest"
  ) >"$log" 2>&1 || {
    rm -rf "$KUBETUNE_BIN_CACHE/.$name-$version."*
    tail -n 30 "$log" >&2
    die "build $name $version" "read $log; check that the Go proxy is reachable (GOPROXY=$(go env GOPROXY)) and that the versions in hack/versions.env exist there, then rerun hack/install-tools.sh"
  }
  info "$name $version: built in $((SECONDS - start)) s -> $dest"
}
