"""The real-API-server tier: etcd + kube-apiserver v1.20.2 on loopback, one per session.

The binaries come from scripts/provision/10-kube-apiserver.sh (cached outside the
clone). The server authenticates static bearer tokens (--token-auth-file): one admin
(group system:masters) and one per ServiceAccount identity the tests run the operator
as, with the user name and groups a real ServiceAccount token carries, so RBAC treats
them as that ServiceAccount. Everything listens on 127.0.0.1 only; every wait is bounded;
both processes are stopped by PID.
"""

from __future__ import annotations

import os
import secrets
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.kube_client import write_kubeconfig
from tests.polling import wait_until
from tests.processes import end_process, free_port
from tests.system_parts import require_binary

PROVISION_STEP = "10-kube-apiserver.sh"
CACHE = Path(os.environ.get("GPTOMNI_KUBE_CACHE", "/var/cache/gptomni/kube-apiserver-v1.20.2")) / "bin"
START_TIMEOUT = 60.0


@dataclass(frozen=True)
class Identity:
    user: str
    groups: tuple[str, ...]
    token: str = field(default_factory=lambda: secrets.token_hex(16))

    @classmethod
    def service_account(cls, namespace: str, name: str) -> Identity:
        return cls(f"system:serviceaccount:{namespace}:{name}",
                   ("system:serviceaccounts", f"system:serviceaccounts:{namespace}", "system:authenticated"))


ADMIN = Identity("gptomni-test-admin", ("system:masters", "system:authenticated"))


def _wait(what: str, ready: Callable[[], bool], process: subprocess.Popen[bytes], log: Path,
          timeout: float = START_TIMEOUT) -> None:
    def up() -> bool:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}:\n{log.read_text()[-4000:]}")
        return ready()

    try:
        wait_until(up, timeout, 0.2, f"{what} ready", ignoring=(httpx.HTTPError, OSError))
    except AssertionError as exc:
        raise TimeoutError(f"{exc}:\n{log.read_text()[-4000:]}") from None


def _openssl(*args: str) -> None:
    subprocess.run([str(require_binary("openssl", PROVISION_STEP)), *args], check=True, capture_output=True, timeout=60)


class ApiServer:
    """A running etcd + kube-apiserver; `kubeconfig(identity)` is how anyone reaches it."""

    def __init__(self, directory: Path, identities: list[Identity]) -> None:
        self.directory = directory
        self.identities = [ADMIN, *identities]
        self.port = free_port()
        self.url = f"https://127.0.0.1:{self.port}"
        self._processes: list[subprocess.Popen[bytes]] = []

    @property
    def ca_pem(self) -> bytes:
        return (self.directory / "serving.crt").read_bytes()

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cadata=self.ca_pem.decode("ascii"))

    def kubeconfig(self, identity: Identity) -> Path:
        safe = identity.user.replace(":", "-")
        return write_kubeconfig(self.directory / f"kubeconfig-{safe}", self.url, identity.token, self.ca_pem)

    def start(self) -> None:
        etcd = require_binary("etcd", PROVISION_STEP, CACHE / "etcd")
        apiserver = require_binary("kube-apiserver", PROVISION_STEP, CACHE / "kube-apiserver")
        d = self.directory
        _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                 "-addext", "subjectAltName=IP:127.0.0.1", "-addext", "basicConstraints=critical,CA:TRUE",
                 "-keyout", str(d / "serving.key"), "-out", str(d / "serving.crt"))
        _openssl("genrsa", "-out", str(d / "service-accounts.key"), "2048")
        (d / "tokens.csv").write_text("".join(
            f'{who.token},{who.user},{who.user},"{",".join(who.groups)}"\n' for who in self.identities))

        client_port, peer_port = free_port(), free_port()
        etcd_log = d / "etcd.log"
        self._processes.append(subprocess.Popen([
            str(etcd), "--name=test", f"--data-dir={d / 'etcd'}",
            f"--listen-client-urls=http://127.0.0.1:{client_port}",
            f"--advertise-client-urls=http://127.0.0.1:{client_port}",
            f"--listen-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}",
            f"--initial-cluster=test=http://127.0.0.1:{peer_port}",
            "--listen-metrics-urls=", "--log-level=warn",
        ], stdout=etcd_log.open("wb"), stderr=subprocess.STDOUT))
        _wait("etcd", lambda: httpx.get(f"http://127.0.0.1:{client_port}/health", timeout=1).json()["health"] == "true",
              self._processes[-1], etcd_log)

        apiserver_log = d / "kube-apiserver.log"
        self._processes.append(subprocess.Popen([
            str(apiserver), f"--etcd-servers=http://127.0.0.1:{client_port}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            "--insecure-port=0", f"--tls-cert-file={d / 'serving.crt'}", f"--tls-private-key-file={d / 'serving.key'}",
            f"--token-auth-file={d / 'tokens.csv'}", "--authorization-mode=RBAC", "--anonymous-auth=false",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={d / 'service-accounts.key'}",
            f"--service-account-signing-key-file={d / 'service-accounts.key'}",
            "--service-cluster-ip-range=10.0.0.0/24", "--v=0",
        ], stdout=apiserver_log.open("wb"), stderr=subprocess.STDOUT))
        headers = {"Authorization": f"Bearer {ADMIN.token}"}
        _wait("kube-apiserver", lambda: httpx.get(f"{self.url}/readyz", headers=headers, timeout=2,
                                                  verify=self.ssl_context()).status_code == 200,
              self._processes[-1], apiserver_log)

    def stop(self) -> None:
        for process in reversed(self._processes):  # the API server first, then its etcd
            end_process(process, process.terminate, timeout=20)
        self._processes.clear()
