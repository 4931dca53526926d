package main

import (
	"fmt"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"
)

// readObject parses one Kubernetes object from JSON or YAML into an Unstructured the way
// client-go decodes API responses (whole numbers become int64, which kstatus's
// NestedInt64 reads for observedGeneration and Argo CD's Lua bridge turns into numbers).
func readObject(path string) (*unstructured.Unstructured, error) {
	raw, err := readInput(path)
	if err != nil {
		return nil, err
	}
	data, err := yaml.YAMLToJSON(raw)
	if err != nil {
		return nil, fmt.Errorf("%s is neither JSON nor YAML: %w", path, err)
	}
	u := &unstructured.Unstructured{}
	if err := u.UnmarshalJSON(data); err != nil {
		return nil, fmt.Errorf("%s is not a Kubernetes object (needs apiVersion and kind): %w", path, err)
	}
	return u, nil
}
