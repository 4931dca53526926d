package main

import (
	"fmt"

	"sigs.k8s.io/kind/pkg/internal/apis/config/encoding"
)

type kindMount struct {
	HostPath      string `json:"hostPath"`
	ContainerPath string `json:"containerPath"`
	ReadOnly      bool   `json:"readOnly"`
	Propagation   string `json:"propagation"`
}

type kindNode struct {
	Role                 string            `json:"role"`
	Image                string            `json:"image"`
	Labels               map[string]string `json:"labels"`
	ExtraMounts          []kindMount       `json:"extraMounts"`
	KubeadmConfigPatches []string          `json:"kubeadmConfigPatches"`
}

type kindCluster struct {
	Name                 string     `json:"name"`
	Nodes                []kindNode `json:"nodes"`
	KubeadmConfigPatches []string   `json:"kubeadmConfigPatches"`
}

// kindConfig loads a kind config with kind's own encoding.Load (strict decoding of
// kind.x-k8s.io/v1alpha4, defaulting, conversion) and runs Cluster.Validate, the checks
// `kind create cluster` makes before it creates any container. It prints the cluster as kind
// sees it after defaulting, so a test can check labels, mounts and kubeadm patches.
func kindConfig(path string) (any, error) {
	cfg, err := encoding.Load(path)
	if err != nil {
		return nil, fmt.Errorf("kind could not load %s: %w", path, err)
	}
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("kind rejects %s: %w", path, err)
	}
	out := kindCluster{Name: cfg.Name, Nodes: []kindNode{}, KubeadmConfigPatches: []string{}}
	out.KubeadmConfigPatches = append(out.KubeadmConfigPatches, cfg.KubeadmConfigPatches...)
	for _, n := range cfg.Nodes {
		node := kindNode{
			Role: string(n.Role), Image: n.Image, Labels: map[string]string{},
			ExtraMounts: []kindMount{}, KubeadmConfigPatches: []string{},
		}
		for k, v := range n.Labels {
			node.Labels[k] = v
		}
		for _, m := range n.ExtraMounts {
			node.ExtraMounts = append(node.ExtraMounts, kindMount{
				HostPath: m.HostPath, ContainerPath: m.ContainerPath, ReadOnly: m.Readonly,
				Propagation: string(m.Propagation),
			})
		}
		node.KubeadmConfigPatches = append(node.KubeadmConfigPatches, n.KubeadmConfigPatches...)
		out.Nodes = append(out.Nodes, node)
	}
	return out, nil
}
