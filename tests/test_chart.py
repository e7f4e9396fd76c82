"""The Helm chart, rendered by Helm's engine and checked by real validators."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from tests.chart_render import (
    CHART,
    CONVENTIONS,
    FULL,
    KUBE_VERSION,
    OPENSHIFT,
    ROOT,
    VARIANTS,
    by_kind,
    notes,
    one,
    pod,
    render,
)

# Kinds that kubernetes-validate has no schema for (CRDs of other projects).
THIRD_PARTY = {"ServiceMonitor", "PrometheusRule", "HTTPRoute", "BackendTrafficPolicy"}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_lint_is_clean(variant: str) -> None:
    report = helm.lint(CHART, VARIANTS[variant], strict=True, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == [] and report["messages"] == []


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_core_object_validates_strictly(variant: str) -> None:
    documents = render(VARIANTS[variant])
    validated = 0
    for document in documents:
        if document["kind"] in THIRD_PARTY:
            continue
        kubernetes_validate.validate(document, KUBE_VERSION, strict=True)
        validated += 1
    assert validated >= 4


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"relay": {"replicas": -1}}, "replicas"),
        ({"ingress": {"provider": "traefik"}}, "provider"),
        ({"relay": {"replicaz": 2}}, "replicaz"),
        ({"image": {"digest": "latest"}}, "digest"),
        ({"relay": {"apiKeys": {"keys": ["short"]}}}, "keys"),
        ({"operator": {"watchNamespaces": ["Not_A_Namespace"]}}, "watchNamespaces"),
        ({"relay": {"extraEnvVars": [{"name": "A", "valuefrom": {}}]}}, "valuefrom"),
        ({"relay": {"extraEnvVars": {"A": "1"}}}, "extraEnvVars"),
        ({"operator": {"extraVolumeMounts": [{"name": "ca", "mountpath": "/ca"}]}}, "mountpath"),
        ({"relay": {"containerPorts": {"http": 0}}}, "containerPorts"),
        ({"operator": {"containerPorts": {"metric": 9090}}}, "metric"),
        ({"relay": {"livenessProbe": {"periodSecond": 5}}}, "periodSecond"),
        ({"relay": {"containerSecurityContext": {"runAsUser": "1000"}}}, "runAsUser"),
        ({"operator": {"podSecurityContext": {"fsgroup": 1000}}}, "fsgroup"),
        ({"commonLabels": {"app.kubernetes.io/name": "mine"}}, "app.kubernetes.io/name"),
        ({"commonLabels": {"team": "not a label value"}}, "team"),
        ({"ingress": {"gateway": {"backendTrafficPolicy": {"enable": False}}}}, "enable"),
    ],
)
def test_invalid_values_fail_with_the_schema_error(values: dict[str, Any], message: str) -> None:
    with helm.Chart.load(CHART) as chart, pytest.raises(helm.HelmValuesError) as caught:
        chart.validate_schema(values)
    assert message in str(caught.value)
    with pytest.raises(helm.HelmError):
        render(values)


def test_relay_mounts_the_pool_secret_as_a_directory_where_it_reads_it() -> None:
    documents = render({})
    deployment = one(documents, "Deployment", "gptomni-relay")
    pod = deployment["spec"]["template"]["spec"]
    [container] = pod["containers"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["pool"]["secret"]["secretName"] == "gptomni-credentials"
    assert all("subPath" not in m and "subPathExpr" not in m for m in container["volumeMounts"])
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPTOMNI_CREDENTIALS_FILE"] == f"{mounts['pool']['mountPath']}/credentials.json"
    assert env["GPTOMNI_API_KEYS_FILE"].startswith(mounts["api-keys"]["mountPath"] + "/")
    assert volumes["api-keys"]["secret"]["secretName"] == "gptomni-relay-api-keys"


def test_relay_deployment_is_production_shaped() -> None:
    documents = render({"relay": {"shutdownGraceSeconds": 40, "preStopSeconds": 5}})
    deployment = one(documents, "Deployment", "gptomni-relay")
    spec = deployment["spec"]
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert spec["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert pod["terminationGracePeriodSeconds"] > 40 + 5
    assert container["lifecycle"]["preStop"]["sleep"]["seconds"] == 5  # exec sleep before 1.30: below
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] and security["runAsNonRoot"] and security["capabilities"]["drop"] == ["ALL"]
    assert not security["allowPrivilegeEscalation"]
    assert pod["topologySpreadConstraints"] and container["resources"]["limits"]
    assert "checksum/api-keys" in spec["template"]["metadata"]["annotations"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPTOMNI_SHUTDOWN_GRACE_SECONDS"] == "40"
    assert pod["automountServiceAccountToken"] is False


# The oldest and newest Kubernetes the chart supports, and the versions where its choices change.
SUPPORTED_VERSIONS = ["v1.20.2", "v1.21.0", "v1.23.0", "v1.29.0", "v1.30.0", "v1.33.0"]


@pytest.mark.parametrize("kube_version", SUPPORTED_VERSIONS)
def test_api_versions_and_features_follow_the_cluster_version(kube_version: str) -> None:
    minor = int(kube_version.split(".")[1])
    documents = render(FULL, kube_version=kube_version)
    [pdb] = by_kind(documents, "PodDisruptionBudget")
    [hpa] = by_kind(documents, "HorizontalPodAutoscaler")
    assert pdb["apiVersion"] == ("policy/v1" if minor >= 21 else "policy/v1beta1")
    assert hpa["apiVersion"] == ("autoscaling/v2" if minor >= 23 else "autoscaling/v2beta2")
    _, container = pod(documents, "gptomni-relay")
    pre_stop = container["lifecycle"]["preStop"]
    # The sleep action is on by default from 1.30 (beta); older servers prune it.
    if minor >= 30:
        assert pre_stop == {"sleep": {"seconds": 5}}
    else:
        assert pre_stop == {"exec": {"command": ["sleep", "5"]}}
    # Helm v4 applies server-side: a port without its protocol fails on older servers.
    for service in by_kind(documents, "Service"):
        assert all(port.get("protocol") == "TCP" for port in service["spec"]["ports"])
    report = helm.lint(CHART, FULL, strict=True, kube_version=kube_version)
    assert report["errors"] == [] and report["messages"] == []


def test_generated_api_key_when_none_is_given() -> None:
    secret = one(render({}), "Secret", "gptomni-relay-api-keys")
    [key] = secret["stringData"]["api-keys"].split()
    assert key.startswith("sk-") and len(key) > 40
    assert "get secret gptomni-relay-api-keys" in notes({})
    given = one(render({"relay": {"apiKeys": {"keys": ["sk-aaaaaaaaaaaaaaaa", "sk-bbbbbbbbbbbbbbbb"]}}}), "Secret",
                "gptomni-relay-api-keys")
    assert given["stringData"]["api-keys"].split() == ["sk-aaaaaaaaaaaaaaaa", "sk-bbbbbbbbbbbbbbbb"]
    assert not by_kind(render({"relay": {"apiKeys": {"existingSecret": "mine"}}}), "Secret")


def test_ingress_providers() -> None:
    f5 = one(render(VARIANTS["ingress-nginx-f5"]), "Ingress", "gptomni-relay")["metadata"]["annotations"]
    assert f5["nginx.org/lb-method"] == "least_conn" and f5["nginx.org/proxy-buffering"] == "false"
    assert f5["nginx.org/proxy-read-timeout"] == "3600s"
    community = one(render(VARIANTS["ingress-community"]), "Ingress", "gptomni-relay")["metadata"]["annotations"]
    assert community["nginx.ingress.kubernetes.io/load-balance"] == "ewma"
    assert community["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert "least connections" in notes(VARIANTS["ingress-community"])
    gateway = render(VARIANTS["gateway"])
    policy = one(gateway, "BackendTrafficPolicy", "gptomni-relay")
    assert policy["spec"]["loadBalancer"]["type"] == "LeastRequest"
    assert policy["spec"]["targetRefs"][0]["name"] == one(gateway, "HTTPRoute", "gptomni-relay")["metadata"]["name"]
    assert not by_kind(gateway, "Ingress")


@pytest.mark.parametrize("variant", ["ingress-nginx-f5", "ingress-community", "gateway"])
def test_the_public_route_reaches_the_api_and_nothing_else(variant: str) -> None:
    """Metrics and probe details are never routed from the internet: only /v1 is."""
    documents = render(VARIANTS[variant])
    paths = [(path["path"], path["backend"]["service"]) for ingress in by_kind(documents, "Ingress")
             for rule in ingress["spec"]["rules"] for path in rule["http"]["paths"]]
    paths += [(match["path"]["value"], {"name": ref["name"], "port": {"number": ref["port"]}})
              for route in by_kind(documents, "HTTPRoute") for rule in route["spec"]["rules"]
              for match in rule["matches"] for ref in rule["backendRefs"]]
    assert paths and all(path == "/v1" for path, _ in paths)
    api_service = one(documents, "Service", "gptomni-relay")
    for _, backend in paths:
        assert backend["name"] == api_service["metadata"]["name"]
        assert [p["name"] for p in api_service["spec"]["ports"]] == ["http"]


def _port_number(container: dict[str, Any], port: int | str) -> int:
    """A port as a number: a named port resolves through the container's ports."""
    if isinstance(port, int):
        return port
    [number] = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return number


def test_container_ports_reach_every_reference() -> None:
    documents = render(CONVENTIONS)
    _, relay = pod(documents, "gptomni-relay")
    assert [(p["name"], p["containerPort"]) for p in relay["ports"]] == [("http", 9000), ("metrics", 9292)]
    assert {"name": "GPTOMNI_PORT", "value": "9000"} in relay["env"] and "args" not in relay
    assert {"name": "GPTOMNI_METRICS_PORT", "value": "9292"} in relay["env"]
    probes = {_port_number(relay, relay[probe]["httpGet"]["port"]) for probe in ("livenessProbe", "readinessProbe")}
    assert probes == {9000}
    [service_port] = one(documents, "Service", "gptomni-relay")["spec"]["ports"]
    assert _port_number(relay, service_port["targetPort"]) == 9000 and service_port["port"] == 80
    admitted = [port["port"] for rule in one(documents, "NetworkPolicy", "gptomni-relay")["spec"]["ingress"]
                for port in rule["ports"]]
    assert [_port_number(relay, port) for port in admitted] == [9000, 9292]

    _, operator = pod(documents, "gptomni-operator")
    assert {"--metrics-port=9191", "--liveness=http://0.0.0.0:8181/healthz"} <= set(operator["args"])
    probes = {_port_number(operator, operator[probe]["httpGet"]["port"]) for probe in ("livenessProbe", "readinessProbe")}
    assert probes == {8181}
    [metrics_port] = one(documents, "Service", "gptomni-operator-metrics")["spec"]["ports"]
    assert metrics_port["port"] == 9191 and _port_number(operator, metrics_port["targetPort"]) == 9191


@pytest.mark.parametrize("deployment", ["gptomni-relay", "gptomni-operator"])
def test_extra_env_list_reaches_the_container_after_the_env_map(deployment: str) -> None:
    _, container = pod(render(CONVENTIONS), deployment)
    component = "relay" if deployment == "gptomni-relay" else "operator"
    extra = CONVENTIONS[component]["extraEnvVars"]
    assert container["env"][-len(extra):] == extra  # valueFrom intact, and last
    if component == "relay":
        # relay.env (a map) still renders; the list comes after it, so the list's value wins.
        assert [e["value"] for e in container["env"] if e["name"] == "GPTOMNI_LOG_LEVEL"] == ["DEBUG", "INFO"]


@pytest.mark.parametrize("deployment", ["gptomni-relay", "gptomni-operator"])
def test_extra_volumes_are_mounted(deployment: str) -> None:
    spec, container = pod(render(CONVENTIONS), deployment)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["ca"] == {"name": "ca", "configMap": {"name": "corporate-ca"}} and "tmp" in volumes
    assert {"name": "ca", "mountPath": "/etc/ssl/corporate", "readOnly": True} in container["volumeMounts"]
    assert {m["name"] for m in container["volumeMounts"]} <= volumes.keys()


@pytest.mark.parametrize("deployment", ["gptomni-relay", "gptomni-operator"])
def test_security_contexts_can_leave_the_ids_to_openshift(deployment: str) -> None:
    ids = {"runAsUser", "runAsGroup", "fsGroup"}
    spec, container = pod(render({}), deployment)
    assert spec["securityContext"]["fsGroup"] == container["securityContext"]["runAsUser"] == 10001
    spec, container = pod(render(OPENSHIFT), deployment)
    assert not ids & (spec["securityContext"].keys() | container["securityContext"].keys())
    # The rest of the restricted profile stays.
    assert spec["securityContext"]["runAsNonRoot"] and container["securityContext"]["runAsNonRoot"]
    assert container["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_probes_are_overridable() -> None:
    _, relay = pod(render(CONVENTIONS), "gptomni-relay")
    assert "startupProbe" not in relay
    assert relay["livenessProbe"]["periodSeconds"] == 30 and relay["livenessProbe"]["httpGet"]["path"] == "/healthz"
    exec_probe = {"httpGet": None, "exec": {"command": ["gptomni-ready"]}}
    _, operator = pod(render({"operator": {"readinessProbe": exec_probe}}), "gptomni-operator")
    assert operator["readinessProbe"]["exec"] == {"command": ["gptomni-ready"]}
    assert "httpGet" not in operator["readinessProbe"]


def _selectors(node: Any) -> Iterator[dict[str, str]]:
    """Every label selector in a manifest: matchLabels, and a Service's plain selector."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "matchLabels" or (key == "selector" and "matchLabels" not in value):
                yield value
            yield from _selectors(value)
    elif isinstance(node, list):
        for item in node:
            yield from _selectors(item)


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_common_labels_reach_every_object_but_no_selector(variant: str) -> None:
    common = CONVENTIONS["commonLabels"]
    documents = render({**VARIANTS[variant], "commonLabels": common})
    for document in documents:
        assert document["metadata"]["labels"].items() >= common.items(), document["metadata"]["name"]
    for deployment in by_kind(documents, "Deployment"):
        template = deployment["spec"]["template"]["metadata"]["labels"]
        assert template.items() >= common.items() | deployment["spec"]["selector"]["matchLabels"].items()
    selectors = list(_selectors(documents))
    assert selectors and not any(common.keys() & selector.keys() for selector in selectors)


def test_envoy_backend_traffic_policy_has_its_own_flag() -> None:
    gateway = VARIANTS["gateway"]["ingress"]
    documents = render({"ingress": {**gateway, "gateway": {"backendTrafficPolicy": {"enabled": False}}}})
    assert one(documents, "HTTPRoute", "gptomni-relay")["spec"]["rules"][0]["timeouts"]["request"] == "3600s"
    assert not by_kind(documents, "BackendTrafficPolicy")
    assert by_kind(render(VARIANTS["gateway"]), "BackendTrafficPolicy")


def test_pool_secret_name_reaches_the_relay_and_the_operator() -> None:
    documents = render({"poolSecret": {"name": "team-pool"}})
    spec, _ = pod(documents, "gptomni-relay")
    assert {"name": "pool", "secret": {"secretName": "team-pool", "optional": True}} in spec["volumes"]
    _, operator = pod(documents, "gptomni-operator")
    assert {"name": "GPTOMNI_OPERATOR_DEFAULT_TARGET_SECRET", "value": "team-pool"} in operator["env"]


def test_operator_rbac_is_least_privilege() -> None:
    clusterwide = render({})
    rules = one(clusterwide, "ClusterRole", "gptomni-operator")["rules"]
    verbs = {(group, resource): set(rule["verbs"]) for rule in rules for group in rule["apiGroups"]
             for resource in rule["resources"]}
    assert verbs[("gptomni.io", "gptomnicredentials/status")] == {"get", "patch", "update"}
    assert "delete" not in set().union(*verbs.values())
    assert ("", "pods") not in verbs
    namespaced = render(VARIANTS["namespaced-operator"])
    assert {r["metadata"]["namespace"] for r in by_kind(namespaced, "Role")} == {"team-a", "team-b"}
    running = [r for r in by_kind(namespaced, "ClusterRole") if "helm.sh/hook" not in r["metadata"].get("annotations", {})]
    assert [r["metadata"]["name"] for r in running] == ["gptomni-operator-discovery"]
    deployment = one(namespaced, "Deployment", "gptomni-operator")
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "--namespace=team-a" in args and "--all-namespaces" not in args
    assert deployment["spec"]["strategy"]["type"] == "Recreate"


def test_uninstall_hook_releases_the_finalizer_after_the_operator_is_gone() -> None:
    documents = render(VARIANTS["namespaced-operator"])
    hooks = [d for d in documents if d["metadata"].get("annotations", {}).get("helm.sh/hook") == "post-delete"]
    assert sorted(d["kind"] for d in hooks) == ["ClusterRole", "ClusterRoleBinding", "Job", "ServiceAccount"]
    assert "NetworkPolicy" in {d["kind"] for d in render({"networkPolicy": {"enabled": True}})
                               if d["metadata"]["name"] == "gptomni-operator-uninstall"}
    [role] = by_kind(hooks, "ClusterRole")
    assert {(rule["resources"][0], tuple(rule["verbs"])) for rule in role["rules"]} == {
        ("gptomnicredentials", ("list", "patch")), ("pods", ("list",))}
    [job] = by_kind(hooks, "Job")
    [container] = job["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["gptomni-operator", "--release-finalizers"]
    assert "--namespace=team-a" in container["args"]
    assert any(arg.startswith("--after-pods-gone=llm/") and "app.kubernetes.io/component=operator" in arg
               for arg in container["args"])
    assert not [d for d in render({"operator": {"enabled": False}}) if "uninstall" in d["metadata"]["name"]]


def test_metrics_are_scraped_from_the_metrics_ports_never_through_the_api_service() -> None:
    documents = render(CONVENTIONS)
    scraped = {}
    for monitor in by_kind(documents, "ServiceMonitor"):
        selector = monitor["spec"]["selector"]["matchLabels"].items()
        services = [s for s in by_kind(documents, "Service") if s["metadata"]["labels"].items() >= selector]
        [endpoint] = monitor["spec"]["endpoints"]
        [(service, port)] = [(s, p) for s in services for p in s["spec"]["ports"] if p["name"] == endpoint["port"]]
        [deployment] = [d for d in by_kind(documents, "Deployment")
                        if d["spec"]["template"]["metadata"]["labels"].items() >= service["spec"]["selector"].items()]
        _, container = pod(documents, deployment["metadata"]["name"])
        scraped[deployment["metadata"]["name"]] = _port_number(container, port["targetPort"])
    assert scraped == {"gptomni-relay": 9292, "gptomni-operator": 9191}
    assert [p["name"] for p in one(documents, "Service", "gptomni-relay")["spec"]["ports"]] == ["http"]
    assert one(documents, "Service", "gptomni-relay-metrics")["spec"]["type"] == "ClusterIP"


def test_monitoring_objects() -> None:
    documents = render(VARIANTS["everything"])
    rule = by_kind(documents, "PrometheusRule")[0]
    chart_rules = yaml.safe_load((CHART / "files" / "prometheus-rules.yaml").read_text())
    assert rule["spec"] == chart_rules
    dashboard = one(documents, "ConfigMap", "gptomni-dashboard")
    assert dashboard["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(dashboard["data"]["gptomni-dashboard.json"])["uid"] == "gptomni-overview"


def test_chart_ships_the_crds() -> None:
    # k8s/crd.yaml is generated from them (tests/test_crd.py checks it is current).
    with helm.Chart.load(CHART) as chart:
        names = sorted(yaml.safe_load(crd["data"])["metadata"]["name"] for crd in chart.crds)
    assert names == ["gptomniapikeys.gptomni.io", "gptomnicredentials.gptomni.io"]


def test_checkov_passes_or_every_skip_is_explained(tmp_path: Path) -> None:
    # Each skip is a deliberate choice, explained here and in docs/deploy.md.
    explained = {
        # IfNotPresent is right for immutable tags and digests; Always adds a registry round trip per start.
        "CKV_K8S_15",
        # The operator must talk to the Kubernetes API: its token is necessary (the relay's is off).
        "CKV_K8S_38",
    }
    manifests = tmp_path / "rendered.yaml"
    documents = render(VARIANTS["digest-pinned"])
    manifests.write_text(yaml.safe_dump_all(documents))
    result = subprocess.run(
        [str(Path(sys.executable).parent / "checkov"), "-f", str(manifests), "--framework", "kubernetes",
         "--quiet", "--compact", "-o", "json", "--skip-check", ",".join(sorted(explained))],
        capture_output=True, text=True, timeout=300,
    )
    report = json.loads(result.stdout)
    reports = report if isinstance(report, list) else [report]
    failed = [(f["check_id"], f["resource"]) for r in reports for f in r["results"]["failed_checks"]]
    assert failed == []
    assert sum(r["summary"]["passed"] for r in reports) > 100


def test_k8s_examples_validate() -> None:
    for crd in yaml.safe_load_all((ROOT / "k8s" / "crd.yaml").read_text()):
        kubernetes_validate.validate(crd, KUBE_VERSION, strict=True)
    for path in sorted((ROOT / "k8s" / "examples").glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document["kind"] in ("GPTOmniCredential", "GPTOmniAPIKey"):
                continue  # checked against the CRD schema in test_crd.py
            kubernetes_validate.validate(document, KUBE_VERSION, strict=True)


def test_examples_and_notes_leave_the_target_and_namespace_to_the_user() -> None:
    """An unset targetSecret follows the chart's poolSecret.name (docs/operator.md); a pinned
    namespace breaks `kubectl -n <theirs> apply`."""
    assert "targetSecret:" not in notes({})
    for name in ("credential.yaml", "cookie-secret.yaml"):
        for document in yaml.safe_load_all((ROOT / "k8s" / "examples" / name).read_text()):
            assert "namespace" not in document["metadata"]
            assert "targetSecret" not in document.get("spec", {})


def relay_env(values: dict[str, Any]) -> dict[str, Any]:
    [container] = one(render(values), "Deployment", "gptomni-relay")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def test_shared_pool_settings_reach_the_relay() -> None:
    assert "GPTOMNI_REDIS_URL" not in relay_env({})  # off by default: the in-process pool
    # A quarter of each limit per pod: 2 new pods serving while 2 old ones still drain.
    assert relay_env({})["GPTOMNI_REPLICAS"] == "4"
    existing = relay_env({"relay": {"replicas": 3, "sharedPool": {
        "enabled": True, "redisUrl": "redis://redis.cache.svc:6379/2", "passwordSecret": {"name": "cache-auth"}}}})
    assert existing["GPTOMNI_REDIS_URL"] == "redis://redis.cache.svc:6379/2"
    assert existing["GPTOMNI_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "cache-auth", "key": "redis-password"}}
    assert existing["GPTOMNI_REPLICAS"] == "6" and existing["GPTOMNI_POOL_LEASE_SECONDS"] == "10"
    scaled = relay_env({"relay": {"autoscaling": {"enabled": True, "maxReplicas": 7},
                                  "sharedPool": {"enabled": True, "redisUrl": "redis://r:6379/0"}}})
    assert scaled["GPTOMNI_REPLICAS"] == "14"  # the HPA's maximum, old and new ReplicaSet at once
    assert "GPTOMNI_REDIS_PASSWORD" not in scaled
    with pytest.raises(helm.HelmError):
        render({"relay": {"sharedPool": {"enabled": True}}})  # neither a URL nor the bundled Redis
    with pytest.raises(helm.HelmError):
        render({"relay": {"sharedPool": {"enabled": True, "redisUrl": "http://not-redis"}}})


def test_a_managed_redis_acl_user_reaches_the_relay() -> None:
    managed = relay_env({"relay": {"sharedPool": {"enabled": True, "redisUrl": "rediss://cache.example:6380/0",
                                                  "username": "gptomni-relay", "passwordSecret": {"name": "cache"}}}})
    assert managed["GPTOMNI_REDIS_USERNAME"] == "gptomni-relay"
    assert managed["GPTOMNI_REDIS_PASSWORD"] == {"secretKeyRef": {"name": "cache", "key": "redis-password"}}
    assert "GPTOMNI_REDIS_USERNAME" not in relay_env({"relay": {"sharedPool": {"enabled": True,
                                                                              "redisUrl": "redis://r:6379/0"}}})
    with pytest.raises(helm.HelmError, match="needs relay.sharedPool.passwordSecret"):
        render({"relay": {"sharedPool": {"enabled": True, "redisUrl": "redis://r:6379/0", "username": "u"}}})


def test_bundled_redis_is_private_to_the_relay() -> None:
    documents = render(VARIANTS["shared-pool-bundled-redis"])
    env = relay_env(VARIANTS["shared-pool-bundled-redis"])
    service = one(documents, "Service", "gptomni-redis")
    assert env["GPTOMNI_REDIS_URL"] == f"redis://{service['metadata']['name']}.llm.svc:6379/0"
    [container] = one(documents, "Deployment", "gptomni-redis")["spec"]["template"]["spec"]["containers"]
    assert container["args"][-2:] == ["--requirepass", "$(REDIS_PASSWORD)"]
    assert container["securityContext"]["readOnlyRootFilesystem"]
    policy = one(documents, "NetworkPolicy", "gptomni-redis")
    assert policy["spec"]["ingress"][0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"] == "relay"
    assert not [d for d in render({}) if "redis" in d["metadata"]["name"]]


def test_the_key_set_secret_reaches_relay_and_operator() -> None:
    documents = render({"apiKeySet": {"secretName": "team-keys"}})
    relay, operator = (one(documents, "Deployment", name)["spec"]["template"]["spec"]
                       for name in ("gptomni-relay", "gptomni-operator"))
    [volume] = [v for v in relay["volumes"] if v["name"] == "key-set"]
    assert volume["secret"] == {"secretName": "team-keys", "optional": True}  # absent until a key exists
    [container] = relay["containers"]
    [mount] = [m for m in container["volumeMounts"] if m["name"] == "key-set"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["GPTOMNI_API_KEY_SET_FILE"] == f"{mount['mountPath']}/api-keys.json" and "subPath" not in mount
    [operator_container] = operator["containers"]
    assert {"name": "GPTOMNI_OPERATOR_KEY_SET_SECRET", "value": "team-keys"} in operator_container["env"]
