"""Throwaway credentials for a dev cluster: a CA, serving certificates, SA keys, tokens.

Everything is generated fresh per cluster with the ``openssl`` command (EC P-256 keys, so it
takes milliseconds) and lives in the cluster's state dir; it is good for a test, nothing else.
Clients authenticate with static bearer tokens (``--token-auth-file``), one per identity, so
the built-in RBAC roles for the controller manager and scheduler apply as in a real cluster.
"""

from __future__ import annotations

import secrets
import subprocess
from dataclasses import dataclass
from pathlib import Path

# Users known to the bootstrap RBAC policy; admin is in system:masters (cluster-admin).
ADMIN_USER = "kubetune-admin"
CONTROLLER_MANAGER_USER = "system:kube-controller-manager"
SCHEDULER_USER = "system:kube-scheduler"
# The apiserver's service IP in --service-cluster-ip-range, put in its certificate.
SERVICE_IP = "10.0.0.1"


@dataclass(frozen=True)
class Credentials:
    """Paths and tokens of one cluster's PKI."""

    ca_cert: Path
    ca_key: Path
    serving_cert: Path
    serving_key: Path
    service_account_key: Path
    service_account_public_key: Path
    token_file: Path
    tokens: dict[str, str]  # user -> bearer token


def _openssl(openssl: Path, *args: str) -> None:
    result = subprocess.run([str(openssl), *args], capture_output=True, text=True, timeout=30)
    if result.returncode != 0:
        raise RuntimeError(
            f"openssl {' '.join(args[:2])} failed: {result.stderr.strip()}; "
            "fix: install the openssl package (hack/install-tools.sh)"
        )


def generate_credentials(openssl: Path, directory: Path) -> Credentials:
    """Write a CA, a loopback serving certificate, SA signing keys and a token file."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = directory / "ca.crt", directory / "ca.key"
    cert, key = directory / "serving.crt", directory / "serving.key"
    csr, ext = directory / "serving.csr", directory / "serving.ext"
    sa_key, sa_pub = directory / "sa.key", directory / "sa.pub"
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]

    _openssl(openssl, "req", "-x509", *ec, "-keyout", str(ca_key), "-out", str(ca_cert),
             "-days", "2", "-subj", "/CN=kubetune-dev-ca")
    _openssl(openssl, "req", "-new", *ec, "-keyout", str(key), "-out", str(csr),
             "-subj", "/CN=kube-apiserver")
    names = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
             "kubernetes.default.svc.cluster.local"]
    alt = ",".join([*(f"DNS:{n}" for n in names), "IP:127.0.0.1", f"IP:{SERVICE_IP}"])
    ext.write_text(
        f"subjectAltName={alt}\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
    )
    _openssl(openssl, "x509", "-req", "-in", str(csr), "-CA", str(ca_cert), "-CAkey", str(ca_key),
             "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    _openssl(openssl, "ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", str(sa_key))
    _openssl(openssl, "ec", "-in", str(sa_key), "-pubout", "-out", str(sa_pub))

    tokens = {user: secrets.token_hex(16) for user in
              (ADMIN_USER, CONTROLLER_MANAGER_USER, SCHEDULER_USER)}
    groups = {ADMIN_USER: "system:masters"}
    token_file = directory / "tokens.csv"
    token_file.write_text("".join(
        f"{token},{user},{user}" + (f',"{groups[user]}"' if user in groups else "") + "\n"
        for user, token in tokens.items()
    ))
    for path in (ca_key, key, sa_key, token_file):
        path.chmod(0o600)
    return Credentials(ca_cert, ca_key, cert, key, sa_key, sa_pub, token_file, tokens)


def write_kubeconfig(path: Path, server: str, ca_cert: Path, user: str, token: str) -> Path:
    """Write a kubeconfig for ``user`` with a bearer ``token`` against ``server``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "apiVersion: v1\n"
        "kind: Config\n"
        "clusters:\n"
        f"- name: kubetune-dev\n  cluster:\n    server: {server}\n"
        f"    certificate-authority: {ca_cert}\n"
        "users:\n"
        f"- name: {user}\n  user:\n    token: {token}\n"
        "contexts:\n"
        f"- name: kubetune-dev\n  context:\n    cluster: kubetune-dev\n    user: {user}\n"
        "    namespace: default\n"
        "current-context: kubetune-dev\n"
    )
    path.chmod(0o600)
    return path
