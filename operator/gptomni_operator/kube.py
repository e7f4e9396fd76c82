"""The few Kubernetes API calls the operator makes beyond what kopf does for it."""

from __future__ import annotations

import base64
import binascii
from typing import Any

from kubernetes_asyncio import client, config
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config.config_exception import ConfigException

from gptomni_operator import GROUP, PLURAL, VERSION
from gptomni_operator.settings import OperatorSettings
from gptomni_operator.spec import SecretKeyRef


class CookieUnavailable(Exception):
    """The referenced cookie Secret or key is missing; `reason` is the condition reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


async def make_api_client(settings: OperatorSettings) -> client.ApiClient:
    if settings.kube_server:
        configuration = client.Configuration(host=settings.kube_server)
        configuration.verify_ssl = False
        configuration.api_key = {"authorization": settings.kube_token}
        configuration.api_key_prefix = {"authorization": "Bearer"}
        return client.ApiClient(configuration)
    try:
        config.load_incluster_config()
    except ConfigException:
        await config.load_kube_config()
    return client.ApiClient()


class KubeApi:
    def __init__(self, api_client: client.ApiClient) -> None:
        self.api_client = api_client
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)

    async def close(self) -> None:
        await self.api_client.close()

    async def read_secret(self, namespace: str, name: str) -> client.V1Secret | None:
        try:
            return await self.core.read_namespaced_secret(name, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise

    async def read_cookie(self, namespace: str, ref: SecretKeyRef) -> str:
        secret = await self.read_secret(namespace, ref.name)
        if secret is None:
            raise CookieUnavailable("SecretNotFound", f"Secret {namespace}/{ref.name} does not exist")
        encoded = (secret.data or {}).get(ref.key)
        if encoded is None:
            raise CookieUnavailable("SecretKeyNotFound", f"Secret {namespace}/{ref.name} has no key {ref.key!r}")
        try:
            cookie = base64.b64decode(encoded).decode("utf-8").strip()
        except (binascii.Error, UnicodeDecodeError):
            raise CookieUnavailable("SecretInvalid", f"key {ref.key!r} of Secret {namespace}/{ref.name} is not UTF-8 text") from None
        if not cookie:
            raise CookieUnavailable("SecretInvalid", f"key {ref.key!r} of Secret {namespace}/{ref.name} is empty")
        return cookie

    async def list_credentials(self, namespace: str) -> list[dict[str, Any]]:
        listing = await self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(listing.get("items") or [])

    async def patch_credential_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name, {"status": status},
            _content_type="application/merge-patch+json",
        )

    async def create_secret(self, namespace: str, body: client.V1Secret) -> None:
        await self.core.create_namespaced_secret(namespace, body)

    async def patch_secret(self, namespace: str, name: str, patch: dict[str, Any]) -> None:
        await self.core.patch_namespaced_secret(name, namespace, patch, _content_type="application/merge-patch+json")
