"""The kmock tier: the real kopf operator, in this process, against kmock's in-memory
Kubernetes API and the GPT-Omni simulator. Fast, for what needs no real API server
(tests/test_operator_kmock.py); the real one is tests/apiserver.py.

Set-up facts: ../shared/notes/kopf-on-kmock.md.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import kopf

from gptomni_operator.handlers import register
from gptomni_operator.memo import CredentialMemo
from gptomni_operator.settings import OperatorSettings
from gptomni_operator.state import OperatorState
from gptomni_relay.edge.server import RunningServer, serve_app
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from tests.harness import sample_value
from tests.kube_client import KubeClient, write_kubeconfig
from tests.processes import free_port

__all__ = ["ApiServerLikeEmulator", "OperatorEnv", "operator_env"]


class ApiServerLikeEmulator(kmock.KubernetesEmulator):
    """kmock with the metadata a real API server always maintains.

    kopf keys its per-object state by `metadata.uid` and "tests" `resourceVersion` in its
    JSON patches; kmock assigns neither, nor names from `generateName` (Events), nor a new
    `generation` when the spec changes (the operator judges a new generation at once).
    """

    async def _handle(self, request: kmock.Request) -> Any:
        if (request.action == kmock.action.UPDATE and request.subresource is None and isinstance(request.data, dict)
                and "spec" in request.data):
            stored = self.objects[request.resource, request.namespace, request.name]
            generation = int(stored.get("metadata", {}).get("generation") or 1) + 1
            request.data.setdefault("metadata", {})["generation"] = generation
        if request.action == kmock.action.CREATE and isinstance(request.data, dict):
            metadata = request.data.setdefault("metadata", {})
            if not metadata.get("name") and metadata.get("generateName"):
                metadata["name"] = f"{metadata['generateName']}{uuid.uuid4().hex[:5]}"
            metadata.setdefault("uid", str(uuid.uuid4()))
            metadata.setdefault("resourceVersion", "1")
            metadata.setdefault("generation", 1)
            metadata.setdefault("creationTimestamp", datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
        return await super()._handle(request)


def declare_resources(kmock: Any) -> None:
    verbs = ["get", "list", "watch", "create", "update", "patch", "delete"]
    declared = {
        "gptomni.io/v1alpha1/gptomnicredentials": ("GPTOmniCredential", True, {"status"}),
        "v1/secrets": ("Secret", True, set()),
        "v1/events": ("Event", True, set()),
        "v1/namespaces": ("Namespace", False, set()),
        "apiextensions.k8s.io/v1/customresourcedefinitions": ("CustomResourceDefinition", False, set()),
    }
    for key, (kind, namespaced, subresources) in declared.items():
        info = kmock.resources[key]
        info.kind = kind
        info.namespaced = namespaced
        info.verbs = set(verbs)
        info.subresources = subresources


@dataclass
class OperatorEnv:
    kube: KubeClient
    sim: SimulatorState
    sim_server: RunningServer
    state: OperatorState
    metrics_port: int

    async def metrics(self) -> str:
        """The operator's scrape; empty until its metrics server is up."""
        try:
            async with self.kube.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
                return await response.text()
        except aiohttp.ClientConnectionError:
            return ""

    async def sample(self, name: str, **labels: str) -> float:
        """One sample of the operator's metrics (summed over other labels); 0 if absent."""
        return sample_value(await self.metrics(), name, **labels)


@asynccontextmanager
async def running_operator(kubeconfig: Path, settings: OperatorSettings) -> AsyncIterator[OperatorState]:
    """kopf.operator in this process; it finds its API server the only way it can: KUBECONFIG."""
    state = OperatorState(settings)
    registry = kopf.OperatorRegistry()
    register(registry, state)
    saved = os.environ.get("KUBECONFIG")
    os.environ["KUBECONFIG"] = str(kubeconfig)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop,
                                             memo=CredentialMemo()))
    try:
        yield state
    finally:
        stop.set_result(None)
        try:
            await asyncio.wait_for(task, timeout=30)
        finally:
            if saved is None:
                os.environ.pop("KUBECONFIG", None)
            else:
                os.environ["KUBECONFIG"] = saved


@asynccontextmanager
async def operator_env(kmock: Any, sim: SimulatorState | None = None, **settings: Any) -> AsyncIterator[OperatorEnv]:
    declare_resources(kmock)
    sim = sim or SimulatorState()
    port = free_port()
    server = str(kmock.url).rstrip("/")
    with tempfile.TemporaryDirectory(prefix="kmock-") as directory:
        kubeconfig = write_kubeconfig(Path(directory) / "kubeconfig", server, token="kmock")
        async with serve_app(build_simulator_app(sim)) as sim_server:
            config = OperatorSettings(upstream_url=sim_server.url, metrics_port=port, failure_backoff_base_seconds=0.5,
                                      **settings)
            async with running_operator(kubeconfig, config) as state:
                # Closed before the operator stops: kopf waits for every task started after
                # it (the servers' connection handlers too) before it returns.
                async with aiohttp.ClientSession() as http:
                    yield OperatorEnv(KubeClient(http, server, token="kmock"), sim, sim_server, state, port)
