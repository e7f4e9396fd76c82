"""The GPTOmniCredential CRD: a structural schema that accepts the examples and refuses nonsense."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from gptomni_operator.spec import CredentialSpec, parse_duration

ROOT = Path(__file__).resolve().parent.parent
CRD = yaml.safe_load((ROOT / "k8s" / "crd.yaml").read_text())
[VERSION] = CRD["spec"]["versions"]
SCHEMA = VERSION["schema"]["openAPIV3Schema"]
EXAMPLE = next(d for d in yaml.safe_load_all((ROOT / "k8s" / "examples" / "credential.yaml").read_text()))


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


def test_schema_is_structural_and_served_with_status_and_columns() -> None:
    assert structural_problems(SCHEMA) == []
    assert VERSION["subresources"] == {"status": {}}
    columns = [c["name"] for c in VERSION["additionalPrinterColumns"]]
    assert columns == ["Healthy", "Reason", "Last check", "Latency", "Age"]
    assert CRD["spec"]["names"]["shortNames"]


def test_example_is_valid() -> None:
    jsonschema.validate(EXAMPLE, SCHEMA)


def test_defaults_match_what_the_operator_assumes() -> None:
    minimal = {"cookieSecretRef": {"name": "c"}}
    defaulted = with_defaults(SCHEMA["properties"]["spec"], copy.deepcopy(minimal))
    jsonschema.validate({"spec": defaulted}, SCHEMA)
    from_crd = CredentialSpec.model_validate(defaulted)
    from_code = CredentialSpec.model_validate(minimal)
    assert from_crd == from_code
    assert parse_duration(defaulted["healthCheck"]["interval"]) == 300


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"cookieSecretRef": {}},
        {"cookieSecretRef": {"name": "c"}, "weight": 0},
        {"cookieSecretRef": {"name": "c"}, "maxConcurrency": "many"},
        {"cookieSecretRef": {"name": "c"}, "targetSecret": "Not_Valid"},
        {"cookieSecretRef": {"name": "c"}, "healthCheck": {"interval": "five minutes"}},
        {"cookieSecretRef": {"name": "c"}, "suspend": "yes"},
    ],
)
def test_invalid_specs_are_refused(spec: dict[str, Any]) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"spec": spec}, SCHEMA)


def test_duration_parsing() -> None:
    assert parse_duration("1h30m") == 5400 and parse_duration("45s") == 45
    with pytest.raises(ValueError):
        parse_duration("")
