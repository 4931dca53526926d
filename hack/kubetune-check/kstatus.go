package main

import (
	"fmt"

	"sigs.k8s.io/cli-utils/pkg/kstatus/status"
)

type kstatusCondition struct {
	Type    string `json:"type"`
	Status  string `json:"status"`
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

type kstatusResult struct {
	Status     string             `json:"status"`
	Message    string             `json:"message"`
	Conditions []kstatusCondition `json:"conditions"`
}

// kstatusOf is status.Compute, the function Flux, kpt and `kubectl apply --prune`'s
// successors use to decide whether an object is InProgress, Current, Failed, ...
func kstatusOf(path string) (any, error) {
	u, err := readObject(path)
	if err != nil {
		return nil, err
	}
	res, err := status.Compute(u)
	if err != nil {
		return nil, fmt.Errorf("kstatus.Compute: %w", err)
	}
	out := kstatusResult{Status: res.Status.String(), Message: res.Message, Conditions: []kstatusCondition{}}
	for _, c := range res.Conditions {
		out.Conditions = append(out.Conditions, kstatusCondition{
			Type: c.Type.String(), Status: string(c.Status), Reason: c.Reason, Message: c.Message,
		})
	}
	return out, nil
}
