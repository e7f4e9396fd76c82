"""A real kopf operator against kmock's Kubernetes API and the GPT-Omni simulator.

Set-up facts: ../shared/notes/kopf-on-kmock.md.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aiohttp
import kmock
import kopf

from gptomni_operator.handlers import register
from gptomni_operator.settings import OperatorSettings
from gptomni_operator.state import OperatorState
from gptomni_relay.server import RunningServer, serve_app
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from tests.processes import free_port

NS = "default"
CR_PATH = f"/apis/gptomni.io/v1alpha1/namespaces/{NS}/gptomnicredentials"
SECRETS_PATH = f"/api/v1/namespaces/{NS}/secrets"


class ApiServerLikeEmulator(kmock.KubernetesEmulator):
    """kmock with the metadata a real API server always assigns on create.

    kopf keys its per-object state by `metadata.uid` and "tests" `resourceVersion` in its
    JSON patches; kmock assigns neither, nor names from `generateName` (Events).
    """

    async def _handle(self, request: kmock.Request) -> Any:
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
    kmock: Any
    http: aiohttp.ClientSession
    sim: SimulatorState
    sim_server: RunningServer
    state: OperatorState
    metrics_port: int

    async def request(self, method: str, path: str, body: Any = None, content_type: str = "application/json") -> Any:
        data = json.dumps(body) if body is not None else None
        async with self.http.request(method, f"{self.kmock.url}{path}", data=data,
                                     headers={"Content-Type": content_type}) as response:
            text = await response.text()
            return response.status, (json.loads(text) if text else None)

    async def put_cookie_secret(self, name: str, cookie: str, key: str = "cookie") -> None:
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS},
                "data": {key: base64.b64encode(cookie.encode()).decode()}}
        status, _ = await self.request("POST", SECRETS_PATH, body)
        if status == 409:
            await self.request("PATCH", f"{SECRETS_PATH}/{name}", {"data": body["data"]},
                               "application/merge-patch+json")

    async def create_credential(self, name: str, secret: str, **spec: Any) -> None:
        body = {"apiVersion": "gptomni.io/v1alpha1", "kind": "GPTOmniCredential",
                "metadata": {"name": name, "namespace": NS},
                "spec": {"cookieSecretRef": {"name": secret, "key": "cookie"}, **spec}}
        status, answer = await self.request("POST", CR_PATH, body)
        assert status in (200, 201), answer

    async def patch_credential(self, name: str, spec: dict[str, Any]) -> None:
        await self.request("PATCH", f"{CR_PATH}/{name}", {"spec": spec}, "application/merge-patch+json")

    async def delete(self, path: str) -> None:
        await self.request("DELETE", path)

    async def credential(self, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", f"{CR_PATH}/{name}")
        return body if status == 200 else None

    async def pool(self, secret: str = "gptomni-credentials") -> dict[str, Any] | None:
        status, body = await self.request("GET", f"{SECRETS_PATH}/{secret}")
        if status != 200:
            return None
        return {"secret": body, "document": json.loads(base64.b64decode(body["data"]["credentials.json"]))}

    async def pool_cookies(self, secret: str = "gptomni-credentials") -> dict[str, str] | None:
        found = await self.pool(secret)
        if found is None:
            return None
        return {entry["id"]: entry["cookie"] for entry in found["document"]["credentials"]}

    async def events(self) -> list[dict[str, Any]]:
        _, body = await self.request("GET", f"/api/v1/namespaces/{NS}/events")
        return list((body or {}).get("items") or [])

    async def metrics(self) -> str:
        """The operator's scrape; empty until its metrics server is up."""
        try:
            async with self.http.get(f"http://127.0.0.1:{self.metrics_port}/metrics") as response:
                return await response.text()
        except aiohttp.ClientConnectionError:
            return ""


async def eventually(probe: Callable[[], Any], timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = await probe()
        if last:
            return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"not reached within {timeout}s; last value: {last!r}")


def healthy_condition(body: dict[str, Any] | None) -> dict[str, Any] | None:
    for item in ((body or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == "Healthy":
            return item
    return None


@asynccontextmanager
async def running_operator(kmock: Any, sim_url: str, metrics_port: int) -> AsyncIterator[OperatorState]:
    settings = OperatorSettings(kube_server=str(kmock.url).rstrip("/"), upstream_url=sim_url, metrics_port=metrics_port,
                                failure_backoff_base_seconds=0.5)
    state = OperatorState(settings)
    registry = kopf.OperatorRegistry()
    register(registry, state)
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    task = asyncio.create_task(kopf.operator(registry=registry, clusterwide=True, standalone=True, stop_flag=stop))
    try:
        yield state
    finally:
        stop.set_result(None)
        await asyncio.wait_for(task, timeout=30)


@asynccontextmanager
async def operator_env(kmock: Any, sim: SimulatorState | None = None) -> AsyncIterator[OperatorEnv]:
    declare_resources(kmock)
    sim = sim or SimulatorState()
    port = free_port()
    async with serve_app(build_simulator_app(sim)) as sim_server, aiohttp.ClientSession() as http:
        async with running_operator(kmock, sim_server.url, port) as state:
            yield OperatorEnv(kmock, http, sim, sim_server, state, port)
