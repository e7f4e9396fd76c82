"""kopf handlers for GPTOmniAPIKey, registered into a given registry.

Two indexes carry what the key-set publishers need (key_set.py), so nothing lists keys:
`api_keys` (namespace -> its keys) and `api_key_secrets` ((namespace, Secret) -> the
keys that read it). Any change of a key, of a Secret holding one, or of a key-set Secret
edited by someone else asks its namespace's publisher for a pass; deleting a key is one
such change (its hash leaves the set), so keys need no finalizer.
"""

from __future__ import annotations

from typing import Any

import kopf

from gptomni_operator import API_KEY_PLURAL, GROUP, VERSION
from gptomni_operator.key_set import KeysIndex
from gptomni_operator.key_spec import KeyMember
from gptomni_operator.publisher import secret_identity
from gptomni_operator.state import OperatorState

API_KEY_CRD = (GROUP, VERSION, API_KEY_PLURAL)


def register_api_keys(registry: kopf.OperatorRegistry, state: OperatorState) -> None:
    key_set_secret = state.settings.key_set_secret

    @kopf.index(*API_KEY_CRD, registry=registry, id="api_keys")
    def api_keys(body: kopf.Body, **_: Any) -> dict[str, KeyMember]:
        member = KeyMember.of(body)
        return {member.namespace: member}

    @kopf.index(*API_KEY_CRD, registry=registry, id="api_key_secrets")
    def api_key_secrets(body: kopf.Body, **_: Any) -> dict[tuple[str, str], str]:
        member = KeyMember.of(body)
        return {} if member.secret_name is None else {(member.namespace, member.secret_name): member.name}

    @kopf.on.event(*API_KEY_CRD, registry=registry, id="api_key_changed")
    async def api_key_changed(namespace: str, api_keys: KeysIndex, **_: Any) -> None:
        # Our own status writes come back here too: such a pass finds nothing to change.
        state.running().key_sets.of(namespace, api_keys).request()

    @kopf.on.event("v1", "secrets", registry=registry, id="api_key_secret_changed")
    async def api_key_secret_changed(type: str | None, namespace: str, name: str, body: kopf.Body,
                                     api_keys: KeysIndex, api_key_secrets: kopf.Index[tuple[str, str], str],
                                     **_: Any) -> None:
        key_sets = state.running().key_sets
        if (namespace, name) in api_key_secrets:
            key_sets.of(namespace, api_keys).request()  # a key rotated, removed or its Secret deleted
        elif name == key_set_secret:
            metadata = body.get("metadata") or {}
            seen = None if type == "DELETED" else secret_identity(metadata.get("labels"), metadata.get("annotations"))
            publisher = key_sets.known(namespace)
            # Someone else edited or deleted it, or an operator restart finds a set whose keys are gone.
            if publisher is None or seen != publisher.seen:
                key_sets.of(namespace, api_keys).request()
