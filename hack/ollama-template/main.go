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
