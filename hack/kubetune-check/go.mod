// kubetune-check: kstatus, Argo CD Lua health and kind config checks for the tests.
//
// The module path sits under sigs.k8s.io/kind/pkg on purpose: kind's config loader and
// validation live in sigs.k8s.io/kind/pkg/internal/apis/config{,/encoding}, and Go lets a
// package import an internal package only when its import path is rooted at the internal
// package's parent. No public kind API loads a config without also creating a cluster
// (cluster.CreateWithConfigFile only loads inside Provider.Create, which then needs a container
// runtime), so this module takes a path under kind's tree instead of copying kind's code.
// Nothing is ever published under this path; it is only the main module of this build.
module sigs.k8s.io/kind/pkg/kubetunecheck

go 1.24.0

require (
	github.com/yuin/gopher-lua v1.1.1
	k8s.io/apimachinery v0.30.1
	sigs.k8s.io/cli-utils v0.37.2
	sigs.k8s.io/kind v0.33.0
	sigs.k8s.io/yaml v1.4.0
)

require (
	github.com/go-logr/logr v1.4.1 // indirect
	github.com/gogo/protobuf v1.3.2 // indirect
	github.com/google/gofuzz v1.2.0 // indirect
	github.com/json-iterator/go v1.1.12 // indirect
	github.com/modern-go/concurrent v0.0.0-20180306012644-bacd9c7ef1dd // indirect
	github.com/modern-go/reflect2 v1.0.2 // indirect
	github.com/pkg/errors v0.9.1 // indirect
	go.yaml.in/yaml/v3 v3.0.4 // indirect
	golang.org/x/net v0.25.0 // indirect
	golang.org/x/text v0.15.0 // indirect
	gopkg.in/inf.v0 v0.9.1 // indirect
	gopkg.in/yaml.v2 v2.4.0 // indirect
	k8s.io/api v0.30.1 // indirect
	k8s.io/klog/v2 v2.120.1 // indirect
	k8s.io/utils v0.0.0-20240502163921-fe8a2dddb1d0 // indirect
	sigs.k8s.io/json v0.0.0-20221116044647-bc3834ca7abd // indirect
	sigs.k8s.io/structured-merge-diff/v4 v4.4.1 // indirect
)
