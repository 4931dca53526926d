#!/usr/bin/env bash
# Build ollama-template (Ollama's own Go template package, github.com/ollama/ollama/template at
# OLLAMA_VERSION) into ~/.cache/kubetune/bin/ollama-template-<version>/ollama-template.
#
# The tests check that a Modelfile TEMPLATE renders, as Ollama runs it, exactly what the model's
# Jinja chat template rendered in training. "As Ollama runs it" means Ollama's template.Parse
# and Template.Execute (collate, .System, .Messages) and the chat handler's rule that a
# Modelfile SYSTEM becomes the first message when a request has no system message; plain Go
# text/template would miss both. Pure Go, CGO off: about a minute cold.
#
# Source: hack/ollama-template/main.go (the trainer image builds the same file).
# Reads JSON {"template", "system", "conversations": [[{role, content}]]} on stdin and writes
# the rendered prompts as a JSON list of strings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "ollama-template $OLLAMA_VERSION"
gomod="module kubetune.local/build/ollama-template

go 1.24.0

require github.com/ollama/ollama $OLLAMA_VERSION"
mkdir -p "$KUBETUNE_BUILD_DIR/ollama-template-$OLLAMA_VERSION/cmd/ollama-template"
cp "$HACK_DIR/ollama-template/main.go" "$KUBETUNE_BUILD_DIR/ollama-template-$OLLAMA_VERSION/cmd/ollama-template/main.go"
go_wrapper_build ollama-template "$OLLAMA_VERSION" "$gomod" "-s -w" \
  kubetune.local/build/ollama-template/cmd/ollama-template
