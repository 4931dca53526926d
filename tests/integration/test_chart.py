"""helm/kubetune with the pinned helm (hack/build-helm.sh): `helm lint --strict`, rendering with
the defaults and with every optional feature on, values.schema.json refusing bad values, and
`helm install` on the dev control plane into a namespace that enforces the "restricted" Pod
Security Standard. The least-privilege proof that runs the operator under the chart's
ServiceAccount: tests/e2e/test_least_privilege.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from kubetune.api import constants as c
from kubetune.serving import alerts
from kubetune_dev import DevCluster
from tests.integration.chart import (
    CHART,
    OPERATOR_SA,
    RELEASE,
    RELEASE_NAMESPACE,
    ROOT,
    can_i,
    can_i_list,
    documented_permissions,
    helm,
    helm_env,
    install_chart,
    parse_can_i,
    service_account_kubeconfig,
    uninstall_chart,
)

pytestmark = pytest.mark.cluster

# `helm template` assumes Kubernetes 1.20 unless told; the chart needs >= 1.29 (its CRDs' CEL rules).
KUBE_VERSION = ("--kube-version", "1.32.13")

# The artifacts claims' export, bound to a claim in the release namespace: a volume the
# "restricted" Pod Security Standard admits (nfs and hostPath it does not).
CLAIMS_VOLUME = {"persistentVolumeClaim": {"claimName": "kubetune-claims", "readOnly": True}}
CLAIMS_VALUES = ("--set", "operator.claimsRoot=/claims",
                 "--set-json", "operator.claimsVolume=" + json.dumps(CLAIMS_VOLUME))

# Every optional feature on (and every list filled), for lint and rendering.
ALL_FEATURES: dict[str, Any] = {
    "crds": {"enabled": True, "keep": True},
    "image": {"digest": "sha256:" + "ab" * 32},
    "imagePullSecrets": ["registry"],
    "replicas": 3,
    "operator": {"watchNamespaces": ["team-a", "team-b"], "servingImage": "registry.example/serve:1",
                 "extraEnv": [{"name": "KUBETUNE_SCRAPE_TIMEOUT", "value": "3"}],
                 "claimsRoot": "/claims", "claimsVolume": CLAIMS_VOLUME},
    "serviceAccount": {"annotations": {"iam.example/role": "kubetune"}},
    "rbac": {"secrets": {"scope": "namespaces", "namespaces": ["team-a"]}},
    "priorityClassName": "platform-critical",
    "nodeSelector": {"node-role.example/platform": "true"},
    "tolerations": [{"key": "platform", "operator": "Exists", "effect": "NoSchedule"}],
    "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "topology.kubernetes.io/zone",
                                   "whenUnsatisfiable": "ScheduleAnyway",
                                   "labelSelector": {"matchLabels": {"app.kubernetes.io/name": "kubetune"}}}],
    "podAnnotations": {"example/a": "b"},
    "podLabels": {"team": "platform"},
    "metrics": {"service": {"annotations": {"example/scrape": "true"}}},
    "monitoring": {
        "release": "kps",
        "serviceMonitor": {"enabled": True, "labels": {"extra": "sm"}},
        "podMonitor": {"enabled": True},
        "prometheusRule": {"enabled": True},
        "grafanaDashboard": {"enabled": True, "namespace": "monitoring"},
    },
}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return helm_env(tmp_path_factory.mktemp("helm"))


def values_file(tmp_path: Path, values: dict[str, Any]) -> str:
    path = tmp_path / "values.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def render(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    out = helm(env, "template", RELEASE, str(CHART), "--namespace", RELEASE_NAMESPACE, *KUBE_VERSION, *args).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def by_kind(docs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for d in docs:
        out.setdefault(d["kind"], []).append(d)
    return out


def test_helm_lint_strict_is_clean_with_defaults_and_every_feature(env: dict[str, str], tmp_path: Path) -> None:
    done = helm(env, "lint", "--strict", str(CHART))
    assert "1 chart(s) linted, 0 chart(s) failed" in done.stdout
    done = helm(env, "lint", "--strict", str(CHART), "-f", values_file(tmp_path, ALL_FEATURES))
    assert "0 chart(s) failed" in done.stdout and "[WARNING]" not in done.stdout


def _pod_is_restricted(pod: dict[str, Any]) -> None:
    """The "restricted" Pod Security Standard's checks, as the chart sets them."""
    sc = pod["securityContext"]
    assert sc["runAsNonRoot"] is True and sc["seccompProfile"]["type"] == "RuntimeDefault"
    for container in pod["containers"]:
        csc = container["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False and csc["capabilities"]["drop"] == ["ALL"]
        assert csc["readOnlyRootFilesystem"] is True
        assert container["resources"]["requests"] and container["resources"]["limits"]["memory"]
    assert not any(v.get("hostPath") for v in pod.get("volumes", []))


def test_defaults_render_the_operator_with_least_privilege_and_no_monitoring(env: dict[str, str]) -> None:
    kinds = by_kind(render(env))
    assert sorted(kinds) == sorted(["CustomResourceDefinition", "Deployment", "ServiceAccount", "ClusterRole",
                                    "ClusterRoleBinding", "Role", "RoleBinding", "Service", "PodDisruptionBudget"])
    crds = {d["metadata"]["name"]: d for d in kinds["CustomResourceDefinition"]}
    assert set(crds) == {f"{c.FINETUNEJOB_PLURAL}.{c.GROUP}", f"{c.MODELDEPLOYMENT_PLURAL}.{c.GROUP}"}
    for name, crd in crds.items():
        assert crd["metadata"]["annotations"] == {"helm.sh/resource-policy": "keep"}
        generated = yaml.safe_load((ROOT / "crds" / f"{c.GROUP}_{name.split('.')[0]}.yaml").read_text())
        assert crd["spec"] == generated["spec"], f"{name}: the chart's CRD differs from crds/"
    deployment = kinds["Deployment"][0]
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    _pod_is_restricted(pod)
    assert pod["serviceAccountName"] == OPERATOR_SA
    container = pod["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["KUBETUNE_LEADER_ELECTION"]["value"] == "true"
    assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert env["POD_NAMESPACE"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.namespace"
    assert "KUBETUNE_CLAIMS_ROOT" not in env  # off: a Job removed before it was read is ResultLost
    assert [v["name"] for v in pod["volumes"]] == ["tmp"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert {p["name"]: p["containerPort"] for p in container["ports"]} == {"metrics": 8080, "health": 8081}
    assert container["image"] == "ghcr.io/kubetune/operator:0.1.0"
    service = kinds["Service"][0]
    assert service["spec"]["ports"] == [{"name": "metrics", "port": 8080, "targetPort": "metrics", "protocol": "TCP"}]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    # No `*` anywhere in RBAC; the Lease only in the release namespace; Secrets get only.
    for role in kinds["ClusterRole"] + kinds["Role"]:
        for rule in role["rules"]:
            assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
    cluster_rules = kinds["ClusterRole"][0]["rules"]
    assert not any("leases" in r["resources"] for r in cluster_rules)
    assert [r["verbs"] for r in cluster_rules if "secrets" in r["resources"]] == [["get"]]
    (role,) = kinds["Role"]
    assert role["metadata"]["namespace"] == RELEASE_NAMESPACE
    assert role["rules"] == [{"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
                              "verbs": ["get", "create", "update"]}]
    assert kinds["ServiceAccount"][0]["automountServiceAccountToken"] is False  # the pod mounts it


def test_every_optional_feature_renders_from_the_generated_files(env: dict[str, str], tmp_path: Path) -> None:
    kinds = by_kind(render(env, "-f", values_file(tmp_path, ALL_FEATURES)))
    for kind in ("ServiceMonitor", "PodMonitor", "PrometheusRule"):
        (obj,) = kinds[kind]
        assert obj["metadata"]["labels"]["release"] == "kps", kind
    assert kinds["ServiceMonitor"][0]["metadata"]["labels"]["extra"] == "sm"
    # The alert rules and the dashboard are what `kubetune alerts` renders, byte for byte.
    assert kinds["PrometheusRule"][0]["spec"] == {"groups": alerts.rule_groups()}
    (dashboard,) = [cm for cm in kinds["ConfigMap"] if cm["metadata"]["name"].endswith("-dashboard")]
    assert dashboard["metadata"]["namespace"] == "monitoring"
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert dashboard["metadata"]["labels"]["release"] == "kps"
    assert json.loads(dashboard["data"]["kubetune-serving.json"]) == json.loads(alerts.render_dashboard())
    assert kinds["PodMonitor"][0]["spec"]["namespaceSelector"] == {"matchNames": ["team-a", "team-b"]}
    deployment = kinds["Deployment"][0]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 3
    assert pod["priorityClassName"] == "platform-critical"
    assert pod["containers"][0]["image"] == "ghcr.io/kubetune/operator@sha256:" + "ab" * 32
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert env["KUBETUNE_NAMESPACES"] == "team-a,team-b" and env["KUBETUNE_SERVING_IMAGE"] == "registry.example/serve:1"
    _pod_is_restricted(pod)
    assert env["KUBETUNE_CLAIMS_ROOT"] == "/claims"
    assert {"name": "claims", "mountPath": "/claims", "readOnly": True} in pod["containers"][0]["volumeMounts"]
    assert {"name": "claims", **CLAIMS_VOLUME} in pod["volumes"]
    # Secrets: a Role in each listed namespace, none cluster-wide.
    assert not any("secrets" in r["resources"] for r in kinds["ClusterRole"][0]["rules"])
    secret_roles = [r for r in kinds["Role"] if r["metadata"]["name"].endswith("-secrets")]
    assert [r["metadata"]["namespace"] for r in secret_roles] == ["team-a"]
    assert secret_roles[0]["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]


def test_crds_can_be_left_out_or_deleted_on_uninstall(env: dict[str, str]) -> None:
    assert "CustomResourceDefinition" not in by_kind(render(env, "--set", "crds.enabled=false"))
    for crd in by_kind(render(env, "--set", "crds.keep=false"))["CustomResourceDefinition"]:
        assert "annotations" not in crd["metadata"]


@pytest.mark.parametrize(("flag", "complaint"), [
    ("replicas=-1", "replicas"),
    ("rbac.secrets.scope=everywhere", "scope"),
    ("image.pullPolicy=Sometimes", "pullPolicy"),
    ("monitoring.serviceMonitor.interval=soon", "interval"),
    ("operator.leaderElektion=true", "leaderElektion"),  # a misspelt key is refused, not ignored
    ("operator.claimsRoot=claims", "claimsRoot"),  # relative: where would it be?
])
def test_the_schema_refuses_a_bad_value_and_names_it(env: dict[str, str], flag: str, complaint: str) -> None:
    done = helm(env, "template", RELEASE, str(CHART), *KUBE_VERSION, "--set", flag, check=False)
    assert done.returncode != 0, f"--set {flag} was accepted"
    assert "values don't meet the specifications of the schema" in done.stderr and complaint in done.stderr, done.stderr


@pytest.mark.parametrize(("flags", "complaint"), [
    (("--set", "operator.claimsRoot=/claims"),
     "operator.claimsRoot is set but operator.claimsVolume is empty"),
    (("--set", "operator.claimsVolume.persistentVolumeClaim.claimName=kubetune-claims"),
     "operator.claimsVolume is set but operator.claimsRoot is empty"),
])
def test_claims_root_and_volume_come_together(env: dict[str, str], flags: tuple[str, ...], complaint: str) -> None:
    done = helm(env, "template", RELEASE, str(CHART), *KUBE_VERSION, *flags, check=False)
    assert done.returncode != 0 and complaint in done.stderr, done.stderr


@pytest.fixture(scope="module")
def installed(cluster: DevCluster, env: dict[str, str]) -> Iterator[DevCluster]:
    install_chart(cluster, env, *CLAIMS_VALUES)
    yield cluster
    uninstall_chart(cluster, env)


def test_helm_install_on_the_control_plane(installed: DevCluster, env: dict[str, str]) -> None:
    status = json.loads(helm(env, "status", RELEASE, "-n", RELEASE_NAMESPACE, "--kubeconfig",
                             str(installed.kubeconfig), "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"
    rs = client.AppsV1Api(installed.api_client()).list_namespaced_replica_set(RELEASE_NAMESPACE).items
    failures = [cd.message for r in rs for cd in (r.status.conditions or []) if cd.type == "ReplicaFailure"]
    assert not failures, failures
    # The CRDs carry the keep policy, so `helm uninstall` (the fixture's end) leaves them.
    crd = client.ApiextensionsV1Api(installed.api_client()).read_custom_resource_definition(
        f"{c.FINETUNEJOB_PLURAL}.{c.GROUP}")
    assert crd.metadata.annotations["helm.sh/resource-policy"] == "keep"
    # operator.claimsRoot reaches the Deployment the apiserver stored, and the pods that carry
    # the claims volume were admitted under the "restricted" standard (install_chart waits for them).
    deployment = client.AppsV1Api(installed.api_client()).read_namespaced_deployment(
        f"{RELEASE}-operator", RELEASE_NAMESPACE)
    container = deployment.spec.template.spec.containers[0]
    assert {e.name: e.value for e in container.env}["KUBETUNE_CLAIMS_ROOT"] == "/claims"
    assert [(m.name, m.mount_path, m.read_only) for m in container.volume_mounts if m.name == "claims"] == [
        ("claims", "/claims", True)]
    (claims,) = [v for v in deployment.spec.template.spec.volumes if v.name == "claims"]
    assert claims.persistent_volume_claim.claim_name == "kubetune-claims"


def test_the_operator_identity_may_do_exactly_what_docs_install_lists(
        installed: DevCluster, namespace: str, tmp_path: Path) -> None:
    """`kubectl auth can-i --list` as the chart's ServiceAccount (its own bound token), in a
    user namespace and in the release namespace, equals the table in docs/install.md."""
    kubeconfig = service_account_kubeconfig(installed, tmp_path / "operator.kubeconfig")
    for where, ns in (("every namespace", namespace), ("release namespace", RELEASE_NAMESPACE)):
        listed = can_i_list(installed, kubeconfig, ns)
        print(f"--- kubectl auth can-i --list -n {ns} (as {RELEASE_NAMESPACE}/{OPERATOR_SA})\n{listed}")
        actual = parse_can_i(listed)
        resources = {p for p in actual if not p.what.startswith("/")}
        for p in resources:
            assert "*" not in p.what and "*" not in p.verbs, f"a wildcard in {p}"
        documented = documented_permissions(where)
        assert actual == documented, (
            f"in {where} ({ns}), can-i lists but docs/install.md does not: "
            f"{sorted((p.what, sorted(p.verbs)) for p in actual - documented)}; "
            f"documented but not granted: {sorted((p.what, sorted(p.verbs)) for p in documented - actual)}")
    # Writes cluster-wide are only those listed: nothing cluster-scoped is writable.
    for resource in ("namespaces", "clusterroles.rbac.authorization.k8s.io", "customresourcedefinitions.apiextensions.k8s.io",
                     "nodes", "validatingwebhookconfigurations.admissionregistration.k8s.io"):
        for verb in ("create", "update", "patch", "delete"):
            assert not can_i(installed, kubeconfig, verb, resource), f"may {verb} {resource}"
    # ... and a wildcard question gets no: no rule grants every verb or every resource.
    assert not can_i(installed, kubeconfig, "*", "pods", "-n", namespace)
    assert not can_i(installed, kubeconfig, "get", "*", "-n", namespace)
