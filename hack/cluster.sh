#!/usr/bin/env bash
# Start or stop the dev cluster (etcd, kube-apiserver, kube-controller-manager, kube-scheduler,
# kwok nodes and the local pod runner) on loopback. Development and test tool only.
#   hack/cluster.sh up      # prints `export KUBECONFIG=...`
#   hack/cluster.sh down    # stops every process, deletes the state dir
#   hack/cluster.sh status
# State dir: $KUBETUNE_CLUSTER_DIR or <repo>/.kubetune/cluster (git-ignored).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

command="${1:-}"
case "$command" in
  up | down | status) ;;
  *) die "parse arguments" "usage: hack/cluster.sh up|down|status" ;;
esac

python="${KUBETUNE_PYTHON:-$REPO_ROOT/.venv/bin/python}"
[[ -x "$python" ]] || die "find python" \
  "create the venv: python3 -m venv .venv && .venv/bin/pip install -e '.[dev]' -e ./dev (or set KUBETUNE_PYTHON)"
"$python" -c 'import kubetune_dev' 2>/dev/null || die "import kubetune_dev" \
  "$python -m pip install -e $REPO_ROOT/dev (make setup installs it)"

state_dir="${KUBETUNE_CLUSTER_DIR:-$REPO_ROOT/.kubetune/cluster}"
exec "$python" -m kubetune_dev "$command" --state-dir "$state_dir"
