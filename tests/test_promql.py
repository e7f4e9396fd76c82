"""Every PromQL expression in the dashboard and the alert rules parses and uses only
metric names that a running relay and a running operator really export. (That the
queries return data on a real Prometheus: tests/test_prometheus_tier.py.)"""

from __future__ import annotations

from typing import Any

import promql_parser
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.monitoring_files import DEFAULT_VARIABLES, alert_rules, panel_queries, variable_queries
from tests.operator_env import ApiServerLikeEmulator, operator_env
from tests.polling import eventually

SUFFIXES = {"counter": ("_total", "_created"), "histogram": ("_bucket", "_count", "_sum", "_created"),
            "gauge": ("",), "summary": ("", "_count", "_sum", "_created")}


def exported_names(exposition: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(exposition):
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


def dashboard_expressions() -> list[str]:
    return [query.substituted(DEFAULT_VARIABLES) for query in panel_queries()] + variable_queries()


def rule_expressions() -> list[str]:
    return [rule["expr"] for rule in alert_rules()]


def metric_names(expression: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


def test_expressions_exist_and_parse() -> None:
    assert len(dashboard_expressions()) >= 15 and len(rule_expressions()) >= 5
    for expression in dashboard_expressions() + rule_expressions():
        promql_parser.parse(expression)


@pytest.mark.timeout(60)
@pytest.mark.kmock(cls=ApiServerLikeEmulator)
async def test_every_metric_used_is_exported(kmock: Any, make_relay: Any) -> None:
    relay = make_relay()
    exported = exported_names(relay.metrics_text())
    async with operator_env(kmock) as env:
        exported |= exported_names(await eventually(env.metrics))
    used: dict[str, set[str]] = {}
    for expression in dashboard_expressions() + rule_expressions():
        for name in metric_names(expression):
            used.setdefault(name, set()).add(expression)
    missing = {name: sorted(exprs)[0] for name, exprs in used.items() if name not in exported}
    assert missing == {}
    # And the dashboard really covers both sides.
    assert any(name.startswith("gptomni_operator_") for name in used)
    assert {"gptomni_time_to_first_token_seconds_bucket", "gptomni_active_streams",
            "gptomni_credential_state", "gptomni_failovers_total", "gptomni_pool_reloads_total"} <= set(used)
