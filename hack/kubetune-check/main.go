// Command kubetune-check runs upstream libraries against kubetune's objects and files, so the
// tests check with the code GitOps tools and kind run themselves, not with a re-implementation.
//
//	kubetune-check kstatus FILE|-              kstatus (sigs.k8s.io/cli-utils) of one object (JSON or YAML)
//	kubetune-check argo-health LUA FILE|-      an Argo CD Lua health check, run the way Argo CD runs it
//	kubetune-check kind-config FILE            kind's own config loader and validation
//
// Each prints one JSON object on stdout and exits 0. A file that cannot be read or parsed
// exits 2 with the reason on stderr; usage errors exit 64.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
)

const usage = `usage:
  kubetune-check kstatus FILE|-
  kubetune-check argo-health LUA_SCRIPT FILE|-
  kubetune-check kind-config FILE`

func main() {
	if len(os.Args) < 2 {
		fail(64, usage)
	}
	var (
		out any
		err error
	)
	switch cmd, args := os.Args[1], os.Args[2:]; {
	case cmd == "kstatus" && len(args) == 1:
		out, err = kstatusOf(args[0])
	case cmd == "argo-health" && len(args) == 2:
		out, err = argoHealth(args[0], args[1])
	case cmd == "kind-config" && len(args) == 1:
		out, err = kindConfig(args[0])
	default:
		fail(64, fmt.Sprintf("unknown command or wrong arguments: %q\n%s", os.Args[1:], usage))
	}
	if err != nil {
		fail(2, err.Error())
	}
	enc := json.NewEncoder(os.Stdout)
	enc.SetIndent("", "  ")
	if err := enc.Encode(out); err != nil {
		fail(2, err.Error())
	}
}

func fail(code int, msg string) {
	fmt.Fprintln(os.Stderr, "kubetune-check: "+msg)
	os.Exit(code)
}

// readInput reads a file, or stdin for "-".
func readInput(path string) ([]byte, error) {
	if path == "-" {
		return io.ReadAll(os.Stdin)
	}
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return data, nil
}
