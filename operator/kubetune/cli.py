"""The `kubetune` command.

  kubetune run FILE         run a FineTuneJob on this machine, no cluster (the local default)
  kubetune validate FILE…   check FineTuneJob / ModelDeployment YAML against the API models
                            (with --kubeconfig, also that the Secrets they reference exist)
  kubetune crds [--check]   write (or check) the generated CRDs in crds/ and the chart
  kubetune alerts [--check] write (or check) the alert rules and dashboard in deploy/monitoring/
                            and the chart
  kubetune predictions export --deployment NAME --out FILE [--pairs FILE]
                            well-scored answers of a ModelDeployment as training data
  kubetune operator         run the operator against the current kubeconfig / in-cluster
  kubetune serve-agent      run the agent beside Ollama in a ModelDeployment pod
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

import yaml
from pydantic import ValidationError

from kubetune.api import constants as c
from kubetune.api.crdgen import render_all
from kubetune.api.docgen import render_reference
from kubetune.api.finetunejob import FineTuneJob, FineTuneJobSpec
from kubetune.api.modeldeployment import ModelDeployment

REPO_ROOT = Path(__file__).resolve().parents[2]
CRD_DIRS = (REPO_ROOT / "crds",)  # the chart's CRD templates: kubetune.chartgen
REFERENCE = REPO_ROOT / "docs" / "reference.md"

_MODELS: dict[str, type[FineTuneJob] | type[ModelDeployment]] = {
    c.FINETUNEJOB_KIND: FineTuneJob,
    c.MODELDEPLOYMENT_KIND: ModelDeployment,
}


# (spec, namespace) -> problems that need the cluster to see (missing Secrets and keys).
ClusterCheck = Callable[[FineTuneJobSpec, str], list[str]]


def validate_documents(
    text: str, source: str, cluster_check: ClusterCheck | None = None, namespace: str = "default"
) -> list[str]:
    """Problems of every kubetune document in a YAML stream, each naming file, document and field.

    With `cluster_check`, valid FineTuneJobs are also checked against the cluster, in their
    `metadata.namespace` or else `namespace`."""
    problems: list[str] = []
    try:
        docs = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as exc:
        return [f"{source}: not valid YAML: {exc}"]
    for i, doc in enumerate(docs, start=1):
        where = f"{source} (document {i})"
        if not isinstance(doc, dict):
            problems.append(f"{where}: expected a mapping with apiVersion, kind, metadata and spec")
            continue
        kind = doc.get("kind")
        model = _MODELS.get(str(kind))
        if model is None:
            continue  # other kinds (Secrets, PVCs…) may live in the same file
        if doc.get("apiVersion") != c.API_VERSION:
            problems.append(f"{where}: apiVersion must be {c.API_VERSION}, not {doc.get('apiVersion')!r}")
        try:
            obj = model.model_validate({k: v for k, v in doc.items() if k != "apiVersion"})
        except ValidationError as exc:
            for err in exc.errors():
                path = ".".join(str(p) for p in err["loc"])
                message = err["msg"].removeprefix("Value error, ")  # our validators name the field
                problems.append(f"{where}: {path}: {message}")
            continue
        if isinstance(obj, FineTuneJob):
            problems.extend(f"{where}: {p}" for p in preflight_problems(obj))
        if cluster_check is not None and isinstance(obj, FineTuneJob):
            ns = str((obj.metadata or {}).get("namespace") or namespace)
            problems.extend(f"{where}: spec.{p}" for p in cluster_check(obj.spec, ns))
    return problems


def preflight_problems(job: FineTuneJob) -> list[str]:
    """The operator's WontFit, from kubetune's GPU table (`kubetune.planning.preflight`): a
    job whose estimated training peak does not fit its resources.gpuProduct."""
    from kubetune.planning.gpus import known_gpu
    from kubetune.planning.preflight import SKIP_ANNOTATION, plan

    spec = job.spec
    if spec.backend != "local" or not spec.resources.gpus or not spec.resources.gpu_product:
        return []
    skip = ((job.metadata or {}).get("annotations") or {}).get(SKIP_ANNOTATION) == "skip"
    result = plan(spec, known_gpu(spec.resources.gpu_product), "table", None, skip_fit=skip)
    return [result.problem] if result.problem else []


def _secrets_in_cluster(kubeconfig: str, context: str | None) -> tuple[ClusterCheck, str]:
    """A ClusterCheck that reads Secrets' key names with `kubeconfig`, and the namespace of its
    context (default: "default")."""
    import kubernetes

    from kubetune.operator.reconcile.finetunejob import read_secret_keys, secret_problems

    api_client = kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context)  # type: ignore[no-untyped-call]
    core = kubernetes.client.CoreV1Api(api_client)
    contexts, active = kubernetes.config.list_kube_config_contexts(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    if context is not None:
        active = next((x for x in contexts if x["name"] == context), active)
    namespace = str((active or {}).get("context", {}).get("namespace") or "default")

    def keys(ns: str, name: str) -> list[str] | None:
        try:
            return read_secret_keys(core, ns, name)
        except PermissionError:
            print(f"note: not allowed to read Secret {ns}/{name}; its keys were not checked", file=sys.stderr)
            raise

    return (lambda spec, ns: secret_problems(spec, ns, keys)), namespace


def _cmd_validate(args: argparse.Namespace) -> int:
    problems: list[str] = []
    check: ClusterCheck | None = None
    namespace = args.namespace or "default"
    if args.kubeconfig:
        try:
            check, context_namespace = _secrets_in_cluster(args.kubeconfig, args.context)
        except Exception as exc:  # a bad kubeconfig raises several kinds
            print(f"--kubeconfig {args.kubeconfig}: cannot use it: {exc}", file=sys.stderr)
            return 1
        namespace = args.namespace or context_namespace
    for name in args.files:
        path = Path(name)
        if not path.is_file():
            problems.append(f"{name}: no such file")
            continue
        try:
            problems.extend(validate_documents(path.read_text(), name, check, namespace))
        except Exception as exc:  # the cluster could not be asked (unreachable, refused credentials)
            if check is None:
                raise
            problems.append(f"{name}: cannot check Secrets in the cluster: {exc}")
    for p in problems:
        print(p, file=sys.stderr)
    if not problems:
        print(f"{len(args.files)} file(s) valid")
    return 1 if problems else 0


def _cmd_crds(args: argparse.Namespace) -> int:
    rendered = render_all()
    dirs = [Path(args.out)] if args.out else [d for d in CRD_DIRS if d.parent.exists()]
    stale: list[str] = []
    for directory in dirs:
        for name, text in rendered.items():
            target = directory / name
            if args.check:
                if not target.is_file() or target.read_text() != text:
                    stale.append(str(target))
                continue
            directory.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
            print(f"wrote {target}")
    if not args.out:
        from kubetune import chartgen

        stale += chartgen.write_or_check(chartgen.render_crd_templates(), args.check)
        reference = render_reference()
        if args.check:
            if not REFERENCE.is_file() or REFERENCE.read_text() != reference:
                stale.append(str(REFERENCE))
        else:
            REFERENCE.write_text(reference)
            print(f"wrote {REFERENCE}")
    if stale:
        print("out of date (run `kubetune crds`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return 0


def _cmd_alerts(args: argparse.Namespace) -> int:
    from kubetune import chartgen
    from kubetune.serving import alerts

    rc = alerts.main((["--check"] if args.check else []) + (["--out", args.out] if args.out else []))
    if args.out:
        return rc
    stale = chartgen.write_or_check(chartgen.render_monitoring_files(), args.check)
    if stale:
        print("out of date (run `kubetune alerts`): " + ", ".join(stale), file=sys.stderr)
        return 1
    return rc


def _cmd_predictions_export(args: argparse.Namespace) -> int:
    import kubernetes

    from kubetune.predictions_export import export, parse_since

    try:
        parse_since(args.since)
    except ValueError as exc:
        print(f"predictions export: {exc}", file=sys.stderr)
        return 2
    try:
        if args.kubeconfig or not _in_cluster():
            api_client = kubernetes.config.new_client_from_config(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
            _, active = kubernetes.config.list_kube_config_contexts(config_file=args.kubeconfig)  # type: ignore[no-untyped-call]
            namespace = args.namespace or str((active or {}).get("context", {}).get("namespace") or "default")
        else:
            kubernetes.config.load_incluster_config()  # type: ignore[no-untyped-call]
            api_client = kubernetes.client.ApiClient()
            namespace = args.namespace or "default"
    except Exception as exc:  # a bad or missing kubeconfig raises several kinds
        print(f"predictions export: cannot use the kubeconfig: {exc}", file=sys.stderr)
        return 2
    with api_client:
        return export(
            api_client, namespace, args.deployment,
            min_score=args.min_score, since=args.since, out=args.out, pairs=args.pairs,
        )


def _in_cluster() -> bool:
    import os

    return "KUBERNETES_SERVICE_HOST" in os.environ and "KUBECONFIG" not in os.environ


def _cmd_run(args: argparse.Namespace) -> int:
    path = Path(args.file)
    if not path.is_file():
        print(f"{args.file}: no such file", file=sys.stderr)
        return 2
    problems = validate_documents(path.read_text(), args.file)
    if problems:
        for p in problems:
            print(p, file=sys.stderr)
        return 2
    try:
        from rich.console import Console

        from kubetune_trainer.local import run_local
    except ImportError as exc:
        print(f"kubetune run needs the trainer extra: pip install 'kubetune[trainer]' ({exc})", file=sys.stderr)
        return 2
    result = run_local(path, workdir=Path(args.workdir) if args.workdir else None, console=Console())
    return 0 if result.phase == "Succeeded" else 1


def _cmd_operator(args: argparse.Namespace) -> int:
    import asyncio

    import kopf

    from kubetune.operator import handlers  # registers the handlers
    from kubetune.operator.probes import parse_endpoint
    from kubetune.operator.settings import Settings

    try:
        namespaces = Settings.from_env().namespaces
        if args.liveness:
            parse_endpoint(args.liveness)
    except ValueError as exc:
        print(f"operator: {exc}", file=sys.stderr)
        return 2
    # /healthz and /readyz are ours (kopf's --liveness serves one path); kopf peering stays off
    # (standalone): replicas elect a leader on a Lease instead (docs/operator.md).
    handlers.runtime.probe_url = args.liveness
    asyncio.run(
        kopf.operator(
            standalone=True,
            clusterwide=not namespaces,
            namespaces=list(namespaces),
        )
    )
    return 0


def _fallback_triggers(text: str) -> list[str]:
    from kubetune.serving.gateway.settings import FALLBACK_TRIGGERS

    triggers = [t.strip() for t in text.split(",") if t.strip()]
    unknown = sorted(set(triggers) - set(FALLBACK_TRIGGERS))
    if unknown or not triggers:
        raise argparse.ArgumentTypeError(f"expected some of {', '.join(FALLBACK_TRIGGERS)}")
    return triggers


def _cmd_serve_agent(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from kubetune.serving.config import AgentSettings, parse_listen
    from kubetune.serving.server import run_serve_agent

    try:
        env = AgentSettings.from_env()
        host, port = parse_listen(args.listen) if args.listen else (env.listen_host, env.listen_port)
    except ValueError as exc:  # --listen or KUBETUNE_AGENT_LISTEN
        print(f"serve-agent: {exc}", file=sys.stderr)
        return 2
    gateway = None
    if args.gateway:
        from kubetune.serving.gateway.settings import GatewaySettings

        try:
            gw_host, gw_port = parse_listen(args.gateway)
        except ValueError as exc:
            print(f"serve-agent: --gateway: {exc}", file=sys.stderr)
            return 2
        if not args.model:
            print("serve-agent: --gateway needs --model (the name clients call)", file=sys.stderr)
            return 2
        fallback = None
        if args.fallback_url:
            from kubetune.serving.gateway.settings import FallbackSettings

            if not args.fallback_model:
                print("serve-agent: --fallback-url needs --fallback-model", file=sys.stderr)
                return 2
            api_key = None
            if args.fallback_api_key_env:  # the key itself never is an argument (ps, logs)
                api_key = os.environ.get(args.fallback_api_key_env)
                if not api_key:
                    print(f"serve-agent: --fallback-api-key-env: ${args.fallback_api_key_env} is empty",
                          file=sys.stderr)
                    return 2
            fallback = FallbackSettings(
                url=args.fallback_url,
                model=args.fallback_model,
                api_key=api_key,
                timeout_s=args.fallback_timeout_seconds,
                on=frozenset(args.fallback_on),
            )
        gateway = GatewaySettings(
            fallback=fallback,
            ollama_url=args.ollama or env.ollama_url,
            model=args.model,
            deployment=args.model,
            db_path=Path(args.predictions_db),
            listen_host=gw_host,
            listen_port=gw_port,
            content=args.log_content,
            retention_days=args.log_retention_days,
            max_db_bytes=args.log_max_mib * (1 << 20),
        )
        if args.drift_windows:
            from dataclasses import replace as _replace

            from kubetune.serving.drift import DriftSettings

            try:
                sizes = [int(x) for x in args.drift_windows.split(",")]
                if len(sizes) != 6:
                    raise ValueError("six numbers")
                drift = DriftSettings(
                    reference_size=sizes[0], recent_size=sizes[1], reference_feedback=sizes[2],
                    recent_feedback=sizes[3], min_samples=sizes[4], min_feedback=sizes[5])
            except ValueError as exc:
                print(f"serve-agent: --drift-windows {args.drift_windows!r}: {exc}", file=sys.stderr)
                return 2
            gateway = _replace(gateway, drift=drift)
        Path(args.predictions_db).parent.mkdir(parents=True, exist_ok=True)
    settings = replace(
        env,
        config_path=Path(args.config) if args.config else env.config_path,
        ollama_url=args.ollama or env.ollama_url,
        listen_host=host,
        listen_port=port,
        cache_dir=Path(args.cache_dir) if args.cache_dir else env.cache_dir,
        pvc_root=Path(args.pvc_root) if args.pvc_root else env.pvc_root,
    )
    return run_serve_agent(settings, gateway)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kubetune", description="Declarative LLM fine-tuning on Kubernetes.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a FineTuneJob YAML on this machine (no cluster)")
    run.add_argument("file", help="FineTuneJob YAML, e.g. examples/finetune.yaml")
    run.add_argument("--workdir", help="where artifacts go (default .kubetune/runs/<name>)")
    run.set_defaults(func=_cmd_run)

    val = sub.add_parser("validate", help="validate kubetune YAML against the API")
    val.add_argument("files", nargs="+")
    val.add_argument(
        "--kubeconfig",
        help="also check in this cluster that the Secrets and keys FineTuneJobs reference exist",
    )
    val.add_argument("--context", help="kubeconfig context (default: the current one)")
    val.add_argument(
        "-n",
        "--namespace",
        help="namespace of documents without metadata.namespace (default: the context's, else default)",
    )
    val.set_defaults(func=_cmd_validate)

    crds = sub.add_parser("crds", help="generate the CRDs (and docs/reference.md) from the API models")
    crds.add_argument("--out", help="write to this folder instead of crds/ and the chart")
    crds.add_argument("--check", action="store_true", help="fail if the files differ from the models")
    crds.set_defaults(func=_cmd_crds)

    alerts = sub.add_parser("alerts", help="generate the alert rules and Grafana dashboard in deploy/monitoring/")
    alerts.add_argument("--out", help="write to this folder instead of deploy/monitoring/")
    alerts.add_argument("--check", action="store_true", help="fail if the files differ from kubetune.serving.alerts")
    alerts.set_defaults(func=_cmd_alerts)

    predictions = sub.add_parser("predictions", help="the prediction logs of a ModelDeployment's gateways")
    psub = predictions.add_subparsers(dest="predictions_command", required=True)
    pexp = psub.add_parser(
        "export", help="well-scored answers as chat training data (and preference pairs) through the pod proxy"
    )
    pexp.add_argument("--deployment", required=True, help="the ModelDeployment's name")
    pexp.add_argument("-n", "--namespace", help="its namespace (default: the context's, else default)")
    pexp.add_argument("--kubeconfig", help="kubeconfig (default: $KUBECONFIG, ~/.kube/config, or in-cluster)")
    pexp.add_argument("--min-score", type=int, default=4, choices=range(1, 6), metavar="1..5",
                      help="lowest feedback score of an exported answer (default 4)")
    pexp.add_argument("--since", default="7d", help="how far back, e.g. 12h, 7d, 2w (default 7d)")
    pexp.add_argument("--out", required=True, help="chat JSONL to write")
    pexp.add_argument("--pairs", help="also write preference pairs (a good and a <= 2 answer to one prompt)")
    pexp.set_defaults(func=_cmd_predictions_export)

    op = sub.add_parser("operator", help="run the operator")
    op.add_argument("--liveness", default=None,
                    help="serve liveness at this URL and /readyz beside it, e.g. http://0.0.0.0:8081/healthz")
    op.set_defaults(func=_cmd_operator)

    agent = sub.add_parser(
        "serve-agent",
        help="run the serve-agent beside Ollama (flags override the KUBETUNE_* environment)",
    )
    agent.add_argument("--config", help="serving.json (env KUBETUNE_SERVING_CONFIG)")
    agent.add_argument("--ollama", help="Ollama URL (env KUBETUNE_OLLAMA_URL; default http://$POD_IP:11434)")
    agent.add_argument("--listen", help="HOST:PORT of /healthz, /readyz, /status (env KUBETUNE_AGENT_LISTEN)")
    agent.add_argument("--cache-dir", help="verified downloads (env KUBETUNE_CACHE_DIR)")
    agent.add_argument("--pvc-root", help="where pvc://<claim> is mounted (env KUBETUNE_PVC_ROOT)")
    agent.add_argument("--gateway", help="HOST:PORT of the OpenAI-compatible gateway in this process (off when unset)")
    agent.add_argument("--model", help="the model name clients call (the ModelDeployment's name); needed with --gateway")
    agent.add_argument("--predictions-db", default="/var/lib/kubetune/predictions.db", help="the gateway's SQLite prediction log")
    agent.add_argument("--log-content", choices=("full", "redacted", "none"), default="redacted",
                       help="what of prompts and answers the prediction log keeps")
    agent.add_argument("--log-retention-days", type=float, default=30.0)
    agent.add_argument("--log-max-mib", type=int, default=1024)
    agent.add_argument("--drift-windows", help="referenceRequests,recentRequests,referenceFeedback,"
                       "recentFeedback,minSamples,minFeedback (default 1000,500,500,100,100,20)")
    agent.add_argument("--fallback-url", help="base URL of an OpenAI-compatible fallback model (off when unset)")
    agent.add_argument("--fallback-model", help="the fallback's model name")
    agent.add_argument("--fallback-api-key-env", help="name of the environment variable holding the fallback's API key")
    agent.add_argument("--fallback-timeout-seconds", type=float, default=30.0,
                       help="local answer (a stream: first byte) slower than this goes to the fallback")
    agent.add_argument("--fallback-on", type=_fallback_triggers, default=["error", "timeout"],
                       help="comma-separated: error, timeout, refusal")
    agent.set_defaults(func=_cmd_serve_agent)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
