"""The cluster tier's system under test: the chart installed by Helm into the real cluster
(tests/real_cluster.py), the fake GPT-Omni on the node's address behind a Service name, and
OpenAI clients through the relay's Service, as a user runs them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import helm_python as helm
import openai

from gptomni_relay.edge.server import serve_app
from gptomni_relay.simulator import SimulatorState, build_simulator_app
from tests.chart_render import CHART
from tests.harness import BackgroundLoop
from tests.kube_client import condition_of
from tests.real_cluster import IMAGE_REPOSITORY, NODE_IP, Cluster

RELEASE = "gptomni"
API_KEY = "sk-cluster-tier-" + "0123456789abcdef" * 2
UPSTREAM_SERVICE = "fake-gptomni"
# Generous bounds for a busy 2-core machine; the tests measure and report the real times.
POD_START_TIMEOUT = 240.0


@dataclass
class Upstream:
    """The GPT-Omni simulator, listening on the node's address (where pods can reach it)."""

    sim: SimulatorState
    port: int


@contextmanager
def upstream_on_node() -> Iterator[Upstream]:
    loop = BackgroundLoop()
    try:
        sim = SimulatorState()
        server = loop.enter(serve_app(build_simulator_app(sim), host=NODE_IP, quiet=True))
        yield Upstream(sim, server.port)
    finally:
        loop.close()


def upstream_service(namespace: str, port: int) -> list[dict[str, Any]]:
    """A Service name for the simulator (no selector; its Endpoints is the node's address), so
    the relay and the operator find their upstream through the cluster DNS, as they would a real one."""
    metadata = {"name": UPSTREAM_SERVICE, "namespace": namespace}
    return [
        {"apiVersion": "v1", "kind": "Service", "metadata": metadata,
         "spec": {"ports": [{"name": "http", "port": 80, "targetPort": port, "protocol": "TCP"}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": metadata,
         "subsets": [{"addresses": [{"ip": NODE_IP}], "ports": [{"name": "http", "port": port, "protocol": "TCP"}]}]},
    ]


def cookie_and_credential(namespace: str, name: str, cookie: str, max_concurrency: int) -> list[dict[str, Any]]:
    """What a user applies: a cookie Secret and a GPTOmniCredential naming no targetSecret
    (the chart's pool Secret is the operator's default)."""
    return [
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": f"{name}-cookie", "namespace": namespace},
         "type": "Opaque", "stringData": {"cookie": cookie}},
        {"apiVersion": "gptomni.io/v1alpha1", "kind": "GPTOmniCredential",
         "metadata": {"name": name, "namespace": namespace},
         "spec": {"cookieSecretRef": {"name": f"{name}-cookie", "key": "cookie"}, "maxConcurrency": max_concurrency,
                  "healthCheck": {"interval": "5m", "timeout": "10s"}}},
    ]


def base_values(image_tag: str, upstream_port: int, namespace: str) -> dict[str, Any]:
    return {
        "image": {"repository": IMAGE_REPOSITORY, "tag": image_tag},
        "relay": {"apiKeys": {"keys": [API_KEY]},
                  "upstreamUrl": f"http://{UPSTREAM_SERVICE}.{namespace}.svc"},
    }


@dataclass
class Release:
    cluster: Cluster
    namespace: str
    values: dict[str, Any]
    chart: Path = CHART

    @contextmanager
    def helm(self) -> Iterator[helm.Config]:
        with helm.Config(kubeconfig_path=self.cluster.kubeconfig, namespace=self.namespace) as config:
            yield config

    def install(self) -> None:
        # No wait: the relays are unready (by design) until the operator writes the pool.
        with self.helm() as config:
            config.install(self.chart, RELEASE, self.values, namespace=self.namespace, timeout=300)

    def upgrade(self, values: dict[str, Any]) -> None:
        """`helm upgrade --wait`: returns once every changed Deployment has rolled out."""
        self.values = values
        with self.helm() as config:
            config.upgrade(self.chart, RELEASE, values, namespace=self.namespace, wait="watcher", timeout=600)

    @property
    def relay_selector(self) -> str:
        return f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/component=relay"

    def relay_pods(self) -> list[dict[str, Any]]:
        return self.cluster.items("pods", self.namespace, self.relay_selector)

    def ready_relays(self) -> list[str]:
        return [pod["metadata"]["name"] for pod in self.relay_pods()
                if pod["metadata"].get("deletionTimestamp") is None
                and any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions", []))]

    def wait_rolled_out(self, deployment: str) -> None:
        self.cluster.kubectl("rollout", "status", f"deployment/{deployment}", f"--namespace={self.namespace}",
                             f"--timeout={int(POD_START_TIMEOUT)}s", timeout=POD_START_TIMEOUT + 10)

    def service_url(self) -> str:
        service = self.cluster.get("service", f"{RELEASE}-relay", self.namespace)
        assert service is not None
        return f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"

    def credential(self, name: str) -> dict[str, Any] | None:
        return self.cluster.get("gptomnicredential", name, self.namespace)

    def healthy(self, name: str) -> bool:
        condition = condition_of(self.credential(name), "Healthy")
        return condition is not None and condition["status"] == "True"

    def pool(self) -> dict[str, Any] | None:
        secret = self.cluster.get("secret", "gptomni-credentials", self.namespace)
        if secret is None or "credentials.json" not in secret.get("data", {}):
            return None
        pool: dict[str, Any] = json.loads(base64.b64decode(secret["data"]["credentials.json"]))
        return pool

    def client(self, max_retries: int = 0) -> openai.AsyncOpenAI:
        """max_retries=2 is the SDK's default: it retries a request whose connection failed
        before any answer (e.g. a keep-alive connection a draining pod closed as it was reused)."""
        return openai.AsyncOpenAI(base_url=f"{self.service_url()}/v1", api_key=API_KEY, max_retries=max_retries)


@dataclass
class StreamTally:
    """What clients saw of many streams: every one must end complete, none may fail."""

    completed: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def fail(self, kind: str, detail: str) -> None:
        self.failures[kind] += 1
        if len(self.examples) < 5:
            self.examples.append(f"{kind}: {detail[:300]}")


async def one_stream(client: openai.AsyncOpenAI, expected: str, tally: StreamTally, prompt: str = "hello") -> None:
    """One streamed chat completion; complete means the whole answer and finish_reason stop."""
    text, finish = [], None
    try:
        stream = await client.chat.completions.create(
            model="gptomni", messages=[{"role": "user", "content": prompt}], stream=True)
        async for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
    except openai.APIError as error:  # refused, cut, or an error event
        tally.fail(type(error).__name__, str(error))
        return
    answer = "".join(text)
    if finish != "stop" or answer != expected:
        tally.fail("truncated", f"finish={finish} got {len(answer)} of {len(expected)} chars")
    else:
        tally.completed += 1


async def streams_until(client: openai.AsyncOpenAI, expected: str, workers: int, stop: asyncio.Event,
                        tally: StreamTally, deadline: float) -> None:
    """`workers` clients, each streaming one answer after another until `stop` (or the deadline)."""
    async def worker() -> None:
        while not stop.is_set() and time.monotonic() < deadline:
            await one_stream(client, expected, tally)

    await asyncio.gather(*(worker() for _ in range(workers)))
