"""The GPTOmniAPIKey custom resource as the operator reads it (schema:
charts/gptomni/crds/gptomniapikeys.yaml), and what its index keeps of each one."""

from __future__ import annotations

import base64
import binascii
import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gptomni_common.api_key_set import MIN_KEY_LENGTH, KeyLimits
from gptomni_common.redaction import describe_validation_error

GENERATED_KEY_PREFIX = "sk-gptomni-"


def generate_key() -> str:
    """A new key: 256 random bits, URL-safe, recognisable by its prefix."""
    return GENERATED_KEY_PREFIX + secrets.token_urlsafe(32)


class KeySecretRef(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)
    name: str = Field(min_length=1)
    key: str = "api-key"


class APIKeySpec(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True, frozen=True)

    secret_ref: KeySecretRef = Field(alias="secretRef")
    models: tuple[str, ...] = ()
    limits: KeyLimits = Field(default_factory=KeyLimits)
    expires_at: datetime | None = Field(None, alias="expiresAt")
    disabled: bool = False


class KeyUnusable(Exception):
    """The key in the Secret cannot be used; `reason` is the SecretMissing condition's reason."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason, self.message = reason, message


def key_from_data(namespace: str, ref: KeySecretRef, data: Mapping[str, str]) -> str | None:
    """The key under `ref.key` of a Secret's data (None: no such key), or KeyUnusable."""
    encoded = data.get(ref.key)
    if encoded is None:
        return None
    where = f"key {ref.key!r} of Secret {namespace}/{ref.name}"
    try:
        key = base64.b64decode(encoded, validate=True).decode("utf-8").strip()
    except (binascii.Error, UnicodeDecodeError):
        raise KeyUnusable("KeyInvalid", f"{where} is not UTF-8 text") from None
    if len(key) < MIN_KEY_LENGTH or any(char.isspace() or ord(char) < 0x20 or ord(char) == 0x7F for char in key):
        raise KeyUnusable("KeyInvalid", f"{where} must be at least {MIN_KEY_LENGTH} characters without spaces; "
                                        "delete the key to have the operator generate one")
    return key


@dataclass(frozen=True)
class KeyMember:
    """A GPTOmniAPIKey as its namespace's key-set publisher sees it."""

    namespace: str
    name: str
    uid: str
    generation: int | None
    resource_version: str
    spec: APIKeySpec | None
    spec_problem: str  # why the spec does not parse ("" when it does)
    deleting: bool
    status: dict[str, Any]

    @classmethod
    def of(cls, body: Any) -> KeyMember:
        metadata = body["metadata"]
        try:
            spec: APIKeySpec | None = APIKeySpec.model_validate(dict(body.get("spec") or {}))
            problem = ""
        except ValidationError as exc:
            spec, problem = None, describe_validation_error(exc)
        return cls(
            namespace=metadata["namespace"],
            name=metadata["name"],
            uid=metadata.get("uid", ""),
            generation=metadata.get("generation"),
            resource_version=metadata.get("resourceVersion", ""),
            spec=spec,
            spec_problem=problem,
            deleting=bool(metadata.get("deletionTimestamp")),
            status=dict(body.get("status") or {}),
        )

    @property
    def secret_name(self) -> str | None:
        return self.spec.secret_ref.name if self.spec else None
