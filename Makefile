# kubetune — the two commands a newcomer needs:
#   make demo   fine-tune a tiny model on this machine (no cluster, no GPU, no download)
#   make test   install everything the tests need, then run every test tier
# Both install what they need; the second run of each reuses ~/.cache (pip, Go builds, llama.cpp).

SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.kubetune-installed
# What pytest runs: every tier (unit, cluster, slow, e2e). Narrow it with e.g. PYTEST_ARGS='-m "not slow"'.
PYTEST_ARGS ?=

.PHONY: demo test setup tools llama-cpp crds lint cluster-up cluster-down clean

# ./dev is kubetune-dev (dev control plane, local pod runner, test helpers): a second
# distribution, since an extra cannot name a local path; never in the kubetune wheel or image.
$(STAMP): pyproject.toml dev/pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[trainer,dev]' -e ./dev
	@touch $(STAMP)

## setup: the Python environment in .venv (torch, transformers, peft, trl, kopf, …) and llama.cpp
setup: $(STAMP) llama-cpp

## llama-cpp: llama-cpp-python built from its pinned sdist + its vendored convert_hf_to_gguf.py
llama-cpp: $(STAMP)
	bash hack/fetch-llama-cpp.sh $(PY)

## tools: the test control plane (kube-apiserver, controller-manager, scheduler, etcd, kwok, helm)
tools:
	bash hack/install-tools.sh

## demo: `kubetune run examples/finetune.yaml` — the local default, a few minutes on CPU
demo: setup
	$(VENV)/bin/kubetune run examples/finetune.yaml

## test: lint, then every test tier; exit code 5 (no tests collected) fails like any other failure
test: setup tools lint
	$(VENV)/bin/kubetune crds --check
	$(VENV)/bin/kubetune alerts --check
	$(PY) -m pytest tests $(PYTEST_ARGS)

## crds: regenerate crds/ from kubetune.api
crds: $(STAMP)
	$(VENV)/bin/kubetune crds

## lint: ruff, and mypy --strict on the operator, trainer and dev-tool packages
lint: $(STAMP)
	$(VENV)/bin/ruff check operator trainer_image dev tests bench examples
	$(VENV)/bin/mypy operator/kubetune trainer_image/kubetune_trainer dev/kubetune_dev

## cluster-up / cluster-down: the local control plane with kwok nodes and the local pod runner
cluster-up: tools setup
	bash hack/cluster.sh up

cluster-down:
	bash hack/cluster.sh down

clean:
	rm -rf $(VENV) .kubetune .pytest_cache
