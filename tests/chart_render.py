"""Render the Helm chart with Helm's own engine (helm-python-sdk), as `helm template` would."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import helm_python as helm
import yaml
from helm_python import _native

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "charts" / "gptomni"
KUBE_VERSION = "1.31.0"


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML silently keeps the last of two equal keys; strict YAML decoders reject them, and so do we."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys = [self.construct_object(key, deep=deep) for key, _ in node.value]
        repeated = sorted({str(key) for key in keys if keys.count(key) > 1})
        if repeated:
            raise yaml.constructor.ConstructorError(None, None, f"repeated keys {repeated}", node.start_mark)
        return super().construct_mapping(node, deep=deep)


def render_for(chart: helm.Chart, values: dict[str, Any], namespace: str, kube_version: str) -> dict[str, str]:
    """`helm template --kube-version`: Chart.render (helm-python-sdk 0.2.2) does not expose
    the version the templates see in .Capabilities, its C layer takes it."""
    options = {"name": "gptomni", "namespace": namespace, "is_install": True, "kube_version": kube_version}
    rendered: dict[str, str] = json.loads(_native.call_string(
        "helm_render", chart._raw(), json.dumps(values), json.dumps(options)))
    return rendered


def render(values: dict[str, Any] | None = None, namespace: str = "llm",
           kube_version: str | None = None) -> list[dict[str, Any]]:
    """The chart's documents; for Helm's built-in Kubernetes version unless `kube_version` is given."""
    with helm.Chart.load(CHART) as chart:
        chart.validate_schema(values or {})
        if kube_version is None:
            rendered = chart.render(values or {}, name="gptomni", namespace=namespace, is_install=True)
        else:
            rendered = render_for(chart, values or {}, namespace, kube_version)
    documents: list[dict[str, Any]] = []
    for path, text in sorted(rendered.items()):
        if not path.endswith(".yaml"):
            continue
        documents.extend(doc for doc in yaml.load_all(text, Loader=_UniqueKeyLoader) if doc)
    return documents


def notes(values: dict[str, Any] | None = None) -> str:
    with helm.Chart.load(CHART) as chart:
        rendered = chart.render(values or {}, name="gptomni", namespace="llm", is_install=True)
    return rendered["gptomni/templates/NOTES.txt"]


def by_kind(documents: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [doc for doc in documents if doc["kind"] == kind]


def one(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [doc for doc in documents if doc["kind"] == kind and doc["metadata"]["name"] == name]
    return found


def pod(documents: list[dict[str, Any]], deployment: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The pod spec of a Deployment and its one container."""
    spec = one(documents, "Deployment", deployment)["spec"]["template"]["spec"]
    [container] = spec["containers"]
    return spec, container


FULL = {
    "metrics": {"serviceMonitor": {"enabled": True}, "prometheusRule": {"enabled": True},
                "grafanaDashboard": {"enabled": True}},
    "ingress": {"enabled": True, "tls": {"enabled": True}},
    "relay": {"autoscaling": {"enabled": True}},
    "networkPolicy": {"enabled": True},
    "operator": {"peering": {"enabled": True}, "replicas": 2},
}

# The chart conventions a maintainer overrides: ports, environment from a Secret, an extra
# volume, common labels, a renamed pool Secret, the gateway without Envoy's policy.
CONVENTIONS = {
    "commonLabels": {"team": "llm", "example.com/cost-center": "cc-42"},
    "poolSecret": {"name": "team-pool"},
    "relay": {
        "containerPorts": {"http": 9000, "metrics": 9292},
        "env": {"GPTOMNI_LOG_LEVEL": "DEBUG"},
        "extraEnvVars": [
            {"name": "HTTPS_PROXY", "valueFrom": {"secretKeyRef": {"name": "proxy", "key": "url"}}},
            {"name": "GPTOMNI_LOG_LEVEL", "value": "INFO"},
        ],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
        "livenessProbe": {"periodSeconds": 30},
        "startupProbe": None,
    },
    "operator": {
        "containerPorts": {"metrics": 9191, "health": 8181},
        "extraEnvVars": [{"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}],
        "extraVolumes": [{"name": "ca", "configMap": {"name": "corporate-ca"}}],
        "extraVolumeMounts": [{"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True}],
    },
    "ingress": {"enabled": True, "provider": "gateway", "gateway": {"backendTrafficPolicy": {"enabled": False}}},
    "networkPolicy": {"enabled": True},
    "metrics": {"serviceMonitor": {"enabled": True}},
}

# OpenShift's restricted SCCs assign a UID (and fsGroup) from the namespace's range.
_NO_FIXED_IDS = {"runAsUser": None, "runAsGroup": None}
OPENSHIFT = {
    component: {"podSecurityContext": {**_NO_FIXED_IDS, "fsGroup": None}, "containerSecurityContext": _NO_FIXED_IDS}
    for component in ("relay", "operator")
}

# Every provider and toggle: what the lint, validation and checkov tests run over.
VARIANTS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "ingress-nginx-f5": {"ingress": {"enabled": True, "provider": "nginx"}},
    "ingress-community": {"ingress": {"enabled": True, "provider": "ingress-nginx", "className": "nginx"}},
    "gateway": {"ingress": {"enabled": True, "provider": "gateway"}},
    "everything": FULL,
    "namespaced-operator": {"operator": {"watchNamespaces": ["team-a", "team-b"]}},
    "no-operator-existing-keys": {"operator": {"enabled": False}, "relay": {"apiKeys": {"existingSecret": "my-keys"}}},
    "digest-pinned": {"image": {"digest": "sha256:" + "a" * 64}, "networkPolicy": {"enabled": True}},
    "conventions": CONVENTIONS,
    "openshift": OPENSHIFT,
    "shared-pool-bundled-redis": {"relay": {"sharedPool": {"enabled": True, "bundledRedis": {"enabled": True},
                                                           "passwordSecret": {"name": "redis-auth"}}},
                                  "networkPolicy": {"enabled": True}},
}
