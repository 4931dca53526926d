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
# Reads JSON {"template", "system", "conversations": [[{role, content}]]} on stdin and writes
# the rendered prompts as a JSON list of strings.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

step "ollama-template $OLLAMA_VERSION"
gomod="module kubetune.local/build/ollama-template

go 1.24.0

require github.com/ollama/ollama $OLLAMA_VERSION"
mkdir -p "$KUBETUNE_BUILD_DIR/ollama-template-$OLLAMA_VERSION/cmd/ollama-template"
cat >"$KUBETUNE_BUILD_DIR/ollama-template-$OLLAMA_VERSION/cmd/ollama-template/main.go" <<'GO'
// Command ollama-template renders chats with a Modelfile TEMPLATE the way Ollama does.
package main

import (
	"encoding/json"
	"os"
	"strings"

	"github.com/ollama/ollama/api"
	"github.com/ollama/ollama/template"
)

type input struct {
	Template      string          `json:"template"`
	System        string          `json:"system"`
	Conversations [][]api.Message `json:"conversations"`
}

func main() {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		panic(err)
	}
	t, err := template.Parse(in.Template)
	if err != nil {
		panic(err)
	}
	out := []string{}
	for _, msgs := range in.Conversations {
		// server/routes.go ChatHandler: the Modelfile SYSTEM leads a chat without one.
		if in.System != "" && (len(msgs) == 0 || msgs[0].Role != "system") {
			msgs = append([]api.Message{{Role: "system", Content: in.System}}, msgs...)
		}
		var b strings.Builder
		if err := t.Execute(&b, template.Values{Messages: msgs}); err != nil {
			panic(err)
		}
		out = append(out, b.String())
	}
	if err := json.NewEncoder(os.Stdout).Encode(out); err != nil {
		panic(err)
	}
}
GO
go_wrapper_build ollama-template "$OLLAMA_VERSION" "$gomod" "-s -w" \
  kubetune.local/build/ollama-template/cmd/ollama-template
