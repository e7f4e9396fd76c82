"""A small Kubernetes API client for the operator tests, one for both tiers: kmock's
in-memory API and the real kube-apiserver (tests/apiserver.py).

Plain HTTP on purpose: the tests look at what the API server answers (status codes,
Table output, 409s), not at what a client library makes of it. Also writes kubeconfig
files, the only way the operator is told where its API server is.
"""

from __future__ import annotations

import base64
import json
import ssl
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from gptomni_common.pool_file import DEFAULT_POOL_SECRET, SECRET_KEY

CRD_API = "/apis/gptomni.io/v1alpha1"
JSON = "application/json"
MERGE_PATCH = "application/merge-patch+json"
TABLE = "application/json;as=Table;v=v1;g=meta.k8s.io"


def write_kubeconfig(path: Path, server: str, token: str, ca_pem: bytes | None = None) -> Path:
    """A kubeconfig with one cluster, one bearer-token user and a current context."""
    cluster: dict[str, Any] = {"server": server}
    if ca_pem is not None:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem).decode("ascii")
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "test", "cluster": cluster}],
        "users": [{"name": "test", "user": {"token": token}}],
        "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
        "current-context": "test",
    }))
    return path


def condition_of(body: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for item in ((body or {}).get("status") or {}).get("conditions") or []:
        if item["type"] == kind:
            return item
    return None


def healthy_condition(body: dict[str, Any] | None) -> dict[str, Any] | None:
    return condition_of(body, "Healthy")


@dataclass(frozen=True)
class KubeClient:
    """Requests to one API server as one user, in one namespace by default."""

    http: aiohttp.ClientSession
    server: str
    token: str
    namespace: str = "default"
    ssl_context: ssl.SSLContext | None = None

    def in_namespace(self, namespace: str) -> KubeClient:
        return replace(self, namespace=namespace)

    @property
    def credentials_path(self) -> str:
        """The REST collection of this namespace's GPTOmniCredentials (append /NAME for one)."""
        return f"{CRD_API}/namespaces/{self.namespace}/gptomnicredentials"

    @property
    def secrets_path(self) -> str:
        return f"/api/v1/namespaces/{self.namespace}/secrets"

    async def request(self, method: str, path: str, body: Any = None, content_type: str = JSON,
                      accept: str = JSON) -> tuple[int, Any]:
        data = json.dumps(body) if body is not None else None
        headers = {"Content-Type": content_type, "Accept": accept, "Authorization": f"Bearer {self.token}"}
        async with self.http.request(method, f"{self.server}{path}", data=data, headers=headers,
                                     ssl=self.ssl_context if self.ssl_context is not None else True) as response:
            text = await response.text()
            try:
                return response.status, (json.loads(text) if text else None)
            except json.JSONDecodeError:
                return response.status, text

    async def ok(self, method: str, path: str, body: Any = None, content_type: str = JSON) -> Any:
        status, answer = await self.request(method, path, body, content_type)
        assert 200 <= status < 300, (method, path, status, answer)
        return answer

    async def apply(self, document: dict[str, Any]) -> Any:
        """Create `document` (kind and apiVersion as in a manifest), or replace it if it exists."""
        path = collection_path(document)
        status, answer = await self.request("POST", path, document)
        if status == 409:
            name = document["metadata"]["name"]
            current = await self.ok("GET", f"{path}/{name}")
            document = {**document, "metadata": {**document["metadata"],
                                                 "resourceVersion": current["metadata"]["resourceVersion"]}}
            return await self.ok("PUT", f"{path}/{name}", document)
        assert 200 <= status < 300, (path, status, answer)
        return answer

    async def put_cookie_secret(self, name: str, cookie: str, key: str = "cookie") -> None:
        data = {key: base64.b64encode(cookie.encode()).decode()}
        body = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": self.namespace},
                "data": data}
        status, answer = await self.request("POST", self.secrets_path, body)
        if status == 409:
            await self.ok("PATCH", f"{self.secrets_path}/{name}", {"data": data}, MERGE_PATCH)
        else:
            assert status in (200, 201), answer

    async def create_credential(self, name: str, secret: str, **spec: Any) -> tuple[int, Any]:
        body = {"apiVersion": "gptomni.io/v1alpha1", "kind": "GPTOmniCredential",
                "metadata": {"name": name, "namespace": self.namespace},
                "spec": {"cookieSecretRef": {"name": secret}, **spec}}
        return await self.request("POST", self.credentials_path, body)

    async def add_credential(self, name: str, secret: str, **spec: Any) -> dict[str, Any]:
        status, answer = await self.create_credential(name, secret, **spec)
        assert status in (200, 201), answer
        return answer

    async def add_cookie_credential(self, name: str, **spec: Any) -> dict[str, Any]:
        """A cookie Secret `<name>-cookie` holding `session=<name>`, and a credential `name` reading it."""
        await self.put_cookie_secret(f"{name}-cookie", f"session={name}")
        return await self.add_credential(name, f"{name}-cookie", **spec)

    async def patch_credential(self, name: str, spec: dict[str, Any]) -> Any:
        return await self.ok("PATCH", f"{self.credentials_path}/{name}", {"spec": spec}, MERGE_PATCH)

    async def delete(self, path: str) -> int:
        status, _ = await self.request("DELETE", path)
        return status

    async def credential(self, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", f"{self.credentials_path}/{name}")
        return body if status == 200 else None

    async def secret(self, name: str) -> dict[str, Any] | None:
        status, body = await self.request("GET", f"{self.secrets_path}/{name}")
        return body if status == 200 else None

    async def pool(self, secret: str = DEFAULT_POOL_SECRET) -> dict[str, Any] | None:
        body = await self.secret(secret)
        if body is None or SECRET_KEY not in (body.get("data") or {}):
            return None
        return {"secret": body, "document": json.loads(base64.b64decode(body["data"][SECRET_KEY]))}

    async def pool_cookies(self, secret: str = DEFAULT_POOL_SECRET) -> dict[str, str] | None:
        found = await self.pool(secret)
        if found is None:
            return None
        return {entry["id"]: entry["cookie"] for entry in found["document"]["credentials"]}

    async def pool_is(self, expected: dict[str, str], secret: str = DEFAULT_POOL_SECRET) -> bool:
        """The pool Secret exists and holds exactly these id -> cookie entries."""
        return await self.pool_cookies(secret) == expected

    async def events(self) -> list[dict[str, Any]]:
        _, body = await self.request("GET", f"/api/v1/namespaces/{self.namespace}/events")
        return list((body or {}).get("items") or [])

    async def events_with_reason(self, reason: str) -> list[dict[str, Any]]:
        return [event for event in await self.events() if event.get("reason") == reason]

    async def condition_is(self, name: str, kind: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
        """The credential once its `kind` condition has this status (and reason)."""
        body = await self.credential(name)
        found = condition_of(body, kind)
        if found and found["status"] == status and (reason is None or found["reason"] == reason):
            return body
        return None

    async def published_in(self, name: str, target: str) -> dict[str, Any] | None:
        """The credential once its Ready condition says it is in the pool Secret `target`."""
        body = await self.condition_is(name, "Ready", "True", "InPool")
        return body if body is not None and body["status"].get("targetSecret") == target else None

    async def healthy(self, name: str, status: str, reason: str | None = None) -> dict[str, Any] | None:
        return await self.condition_is(name, "Healthy", status, reason)

    async def gone(self, name: str) -> bool:
        return await self.credential(name) is None


def collection_path(document: dict[str, Any]) -> str:
    """The REST collection a manifest's object is created in (the kinds these tests apply)."""
    api_version, kind = document["apiVersion"], document["kind"]
    plural = {"CustomResourceDefinition": "customresourcedefinitions", "ServiceAccount": "serviceaccounts",
              "ClusterRole": "clusterroles", "ClusterRoleBinding": "clusterrolebindings", "Role": "roles",
              "RoleBinding": "rolebindings", "Namespace": "namespaces", "Secret": "secrets",
              "ClusterKopfPeering": "clusterkopfpeerings", "KopfPeering": "kopfpeerings"}[kind]
    prefix = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    namespace = document["metadata"].get("namespace")
    return f"{prefix}/namespaces/{namespace}/{plural}" if namespace else f"{prefix}/{plural}"
