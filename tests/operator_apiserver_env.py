"""The operator as the chart deploys it, against the real API server (tests/apiserver.py).

A `Release` is the chart rendered with some values and its operator parts applied: the
CRD (charts/gptomni/crds/, installed verbatim by Helm), the operator's ServiceAccount and
its ClusterRoles/Roles and bindings. Its `ChartOperator` is `gptomni-operator` started
with the rendered Deployment's arguments and environment (ports moved to free ones on
127.0.0.1), and KUBECONFIG holding a token of that ServiceAccount: a verb the chart
forgot fails the test. Each release has its own ServiceAccount identity (registered
with the API server at start), so releases never borrow each other's permissions.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from tests.apiserver import ADMIN, ApiServer, Identity
from tests.chart_render import CHART, by_kind, render
from tests.harness import BackgroundLoop
from tests.kube_client import KubeClient
from tests.polling import eventually
from tests.processes import end_process, free_port

CRD = yaml.safe_load((CHART / "crds" / "gptomnicredentials.yaml").read_text())
KEY_CRD = yaml.safe_load((CHART / "crds" / "gptomniapikeys.yaml").read_text())
RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")
# Releases the tests may install: each one's operator ServiceAccount is known to the API server.
RELEASES = [f"gpo{index}" for index in range(12)]


def release_identity(release: str) -> Identity:
    return Identity.service_account(f"{release}-system", f"{release}-operator")


IDENTITIES = {release: release_identity(release) for release in RELEASES}


def peering_crds() -> list[dict[str, Any]]:
    """kopf's own peering CRDs (kopf.dev/v1), which `operator.peering.enabled` needs."""
    return [{
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.kopf.dev"},
        "spec": {"group": "kopf.dev", "scope": scope,
                 "names": {"kind": kind, "plural": plural, "singular": plural[:-1]},
                 "versions": [{"name": "v1", "served": True, "storage": True, "schema": {"openAPIV3Schema": {
                     "type": "object", "properties": {"status": {"type": "object",
                                                                 "x-kubernetes-preserve-unknown-fields": True}}}}}]},
    } for kind, plural, scope in (("ClusterKopfPeering", "clusterkopfpeerings", "Cluster"),
                                  ("KopfPeering", "kopfpeerings", "Namespaced"))]


@dataclass
class ChartOperator:
    """`gptomni-operator` as a process; everything it writes goes to one file."""

    process: subprocess.Popen[bytes]
    log: Path
    metrics_port: int

    def lines(self) -> list[str]:
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def not_json(self) -> list[str]:
        """Lines that are not one JSON object each (the log format the chart runs with)."""
        bad = []
        for line in self.lines():
            try:
                if not isinstance(json.loads(line), dict):
                    bad.append(line)
            except json.JSONDecodeError:
                bad.append(line)
        return bad

    def messages(self) -> list[str]:
        return [json.loads(line).get("message", "") for line in self.lines() if line.startswith("{")]

    async def metrics(self, http: aiohttp.ClientSession) -> str:
        try:
            async with http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
                return await response.text()
        except aiohttp.ClientConnectionError:
            return ""

    def stop(self, sig: int = signal.SIGTERM) -> int:
        end_process(self.process, lambda: self.process.send_signal(sig))
        return self.process.returncode


@dataclass
class Release:
    name: str
    namespace: str  # where the chart (and the operator's ServiceAccount) lives
    documents: list[dict[str, Any]]
    kubeconfig: Path
    directory: Path
    processes: list[ChartOperator] = field(default_factory=list)

    @property
    def operator_container(self) -> dict[str, Any]:
        for document in by_kind(self.documents, "Deployment"):
            if document["metadata"]["name"] == f"{self.name}-operator":
                [container] = document["spec"]["template"]["spec"]["containers"]
                return container
        raise AssertionError(f"the chart rendered no operator Deployment for {self.name}")

    def start_operator(self, upstream_url: str, **extra_env: str) -> ChartOperator:
        """The operator as the chart's Deployment runs it, with its ports moved to free ones."""
        container = self.operator_container
        metrics_port, liveness_port = free_port(), free_port()
        args = []
        for arg in container["args"]:
            if arg.startswith("--metrics-port="):
                arg = f"--metrics-port={metrics_port}"
            elif arg.startswith("--liveness="):
                arg = f"--liveness=http://127.0.0.1:{liveness_port}/healthz"
            args.append(arg)
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GPTOMNI_", "OTEL_", "KUBE"))}
        env.update({item["name"]: item["value"] for item in container.get("env", []) if "value" in item})
        env.update({"GPTOMNI_UPSTREAM_URL": upstream_url, "KUBECONFIG": str(self.kubeconfig), **extra_env})
        log = self.directory / f"operator-{len(self.processes)}.log"
        [command] = container["command"]
        executable = Path(sys.executable).parent / command
        process = subprocess.Popen([str(executable), *args], env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.processes.append(ChartOperator(process, log, metrics_port))
        return self.processes[-1]

    def stop_all(self) -> None:
        for process in self.processes:
            process.stop()


class Cluster:
    """The session's API server, as the admin sees it, plus the simulator the operators check against."""

    def __init__(self, apiserver: ApiServer, sim: SimulatorState, sim_url: str, root: Path) -> None:
        self.apiserver = apiserver
        self.sim, self.sim_url = sim, sim_url
        self.root = root
        self._free_releases = list(RELEASES)
        self._namespaces: set[str] = set()
        self._crds: set[str] = set()

    def admin(self, http: aiohttp.ClientSession, namespace: str = "default") -> KubeClient:
        return KubeClient(http, self.apiserver.url, ADMIN.token, namespace, self.apiserver.ssl_context())

    async def namespace(self, admin: KubeClient, name: str) -> KubeClient:
        if name not in self._namespaces:
            await admin.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
            self._namespaces.add(name)
        return admin.in_namespace(name)

    async def crd(self, admin: KubeClient, document: dict[str, Any]) -> None:
        """Apply a CRD once per session and wait until it is served."""
        name = document["metadata"]["name"]
        if name in self._crds:
            return
        await admin.apply(document)

        async def established() -> bool:
            _, body = await admin.request("GET", f"/apis/apiextensions.k8s.io/v1/customresourcedefinitions/{name}")
            return any(c["type"] == "Established" and c["status"] == "True"
                       for c in ((body or {}).get("status") or {}).get("conditions") or [])

        await eventually(established, timeout=30)
        self._crds.add(name)

    async def install(self, admin: KubeClient, values: dict[str, Any] | None = None) -> Release:
        """The chart's CRDs and operator RBAC for a new release, as `helm install` would apply them."""
        name = self._free_releases.pop(0)
        namespace = f"{name}-system"
        values = {**(values or {}), "fullnameOverride": name}
        documents = render(values, namespace=namespace)
        for crd in (CRD, KEY_CRD):
            await self.crd(admin, crd)
        await self.namespace(admin, namespace)
        for watched in values.get("operator", {}).get("watchNamespaces", []):
            await self.namespace(admin, watched)
        for document in documents:
            if document["kind"] in RBAC_KINDS and document["metadata"]["name"].startswith(f"{name}-operator"):
                await admin.apply(document)
        directory = self.root / name
        directory.mkdir()
        return Release(name, namespace, documents, self.apiserver.kubeconfig(IDENTITIES[name]), directory)


@dataclass
class Simulator:
    sim: SimulatorState
    url: str


def start_simulator(loop: BackgroundLoop) -> Simulator:
    """The GPT-Omni simulator on a loop of its own, so it outlives any one test's loop."""
    sim = SimulatorState()
    server = loop.enter(serve_app(build_simulator_app(sim), quiet=True))
    return Simulator(sim, server.url)


def stopped_cleanly(process: ChartOperator) -> Iterator[str]:
    """What is wrong with a finished operator process (its exit, its log lines)."""
    if process.stop() != 0:
        yield f"exit code {process.process.returncode}"
    yield from (f"not one JSON object: {line[:300]}" for line in process.not_json())


def default_install(cluster: Cluster) -> Iterator[tuple[Release, ChartOperator]]:
    """For a module's fixture: the chart's defaults (all namespaces, ClusterRole), one
    operator process, checked for a clean exit at the end."""

    async def install() -> Release:
        async with aiohttp.ClientSession() as http:
            return await cluster.install(cluster.admin(http))

    release = asyncio.run(install())
    process = release.start_operator(cluster.sim_url)
    yield release, process
    problems = list(stopped_cleanly(process))
    assert problems == [], f"operator log {process.log}"


async def own_namespace(cluster: Cluster, http: aiohttp.ClientSession, test_name: str, prefix: str,
                        numbers: Iterator[int]) -> KubeClient:
    """The admin, in a namespace named after the test."""
    name = re.sub(r"[^a-z0-9]+", "-", test_name.removeprefix("test_apiserver_").lower())[:40].strip("-")
    return await cluster.namespace(cluster.admin(http), f"{prefix}{next(numbers)}-{name}")
