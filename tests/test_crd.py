"""The GPTOmniCredential and GPTOmniAPIKey CRDs offline: one source each, structural
schemas, defaults the operator agrees with. How the real API server applies it (defaults, validation, pruning, /status,
printer columns) is tests/test_operator_apiserver.py."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gptomni_operator.key_spec import APIKeySpec
from gptomni_operator.spec import CredentialSpec, parse_duration

ROOT = Path(__file__).resolve().parent.parent
CRD = yaml.safe_load((ROOT / "charts" / "gptomni" / "crds" / "gptomnicredentials.yaml").read_text())
[VERSION] = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLE = next(d for d in yaml.safe_load_all((ROOT / "k8s" / "examples" / "credential.yaml").read_text()))
KEY_CRD = yaml.safe_load((ROOT / "charts" / "gptomni" / "crds" / "gptomniapikeys.yaml").read_text())
[KEY_VERSION] = KEY_CRD["spec"]["versions"]
KEY_SCHEMA = KEY_VERSION["schema"]["openAPIV3Schema"]
KEY_EXAMPLE = yaml.safe_load((ROOT / "k8s" / "examples" / "api-key.yaml").read_text())


def test_plain_manifest_is_generated_from_the_charts_crds() -> None:
    """k8s/crd.yaml is scripts/generate_crd.py's output for the chart's CRDs, as committed."""
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_crd.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert list(yaml.safe_load_all((ROOT / "k8s" / "crd.yaml").read_text())) == [CRD, KEY_CRD]


def structural_problems(node: dict[str, Any], path: str = "") -> list[str]:
    """Kubernetes' structural-schema rules that a typo would break."""
    problems = []
    if "type" not in node and not node.get("x-kubernetes-preserve-unknown-fields") and not node.get("x-kubernetes-int-or-string"):
        problems.append(f"{path or '<root>'}: no type")
    for name, child in (node.get("properties") or {}).items():
        problems += structural_problems(child, f"{path}.{name}")
    if "items" in node:
        problems += structural_problems(node["items"], f"{path}[]")
    if "default" in node and node.get("type") == "object" and node["default"] not in ({},):
        problems.append(f"{path}: object defaults must be {{}} here")
    return problems


def with_defaults(node: dict[str, Any], value: Any) -> Any:
    """Apply the schema's defaults the way the API server does on create."""
    if node.get("type") == "object" and isinstance(value, dict):
        for name, child in (node.get("properties") or {}).items():
            if name not in value and "default" in child:
                value[name] = copy.deepcopy(child["default"])
            if name in value:
                value[name] = with_defaults(child, value[name])
    return value


def test_schema_is_structural() -> None:
    assert structural_problems(SCHEMA) == []
    assert structural_problems(KEY_SCHEMA) == []


def test_example_is_valid() -> None:
    jsonschema.validate(EXAMPLE, SCHEMA)
    jsonschema.validate(KEY_EXAMPLE, KEY_SCHEMA)


def test_api_key_defaults_match_what_the_operator_assumes() -> None:
    minimal = {"secretRef": {"name": "k"}}
    defaulted = with_defaults(KEY_SCHEMA["properties"]["spec"], copy.deepcopy(minimal))
    jsonschema.validate({"spec": defaulted}, KEY_SCHEMA)
    assert APIKeySpec.model_validate(defaulted) == APIKeySpec.model_validate(minimal)
    assert defaulted == {"secretRef": {"name": "k", "key": "api-key"}, "disabled": False}
    # The example parses as the operator reads it.
    spec = APIKeySpec.model_validate(KEY_EXAMPLE["spec"])
    assert spec.limits.tokens_per_day == 200000 and spec.models == ("gptomni",)


def test_defaults_match_what_the_operator_assumes() -> None:
    minimal = {"cookieSecretRef": {"name": "c"}}
    defaulted = with_defaults(SCHEMA["properties"]["spec"], copy.deepcopy(minimal))
    jsonschema.validate({"spec": defaulted}, SCHEMA)
    assert CredentialSpec.model_validate(defaulted) == CredentialSpec.model_validate(minimal)
    assert parse_duration(defaulted["healthCheck"]["interval"]) == 300
    # No server-side default for the pool Secret: the operator's own (the chart's poolSecret.name) applies.
    assert "targetSecret" not in defaulted


def test_duration_parsing() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    with pytest.raises(ValueError):
        parse_duration("")
