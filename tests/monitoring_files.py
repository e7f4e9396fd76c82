"""The shipped dashboard and alert rules, read as Grafana and Prometheus read them."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
FILES = ROOT / "charts" / "gptomni" / "files"
DASHBOARD = FILES / "grafana-dashboard.json"
RULES = FILES / "prometheus-rules.yaml"
RULE_TESTS = FILES / "prometheus-rules.test.yaml"
# What Grafana substitutes with "All" namespaces and a 30 s scrape interval.
DEFAULT_VARIABLES = {"$__rate_interval": "2m", "$__interval": "30s", "$namespace": ".*"}
LEGEND_LABEL = re.compile(r"\{\{\s*(\w+)\s*\}\}")


@dataclass(frozen=True)
class PanelQuery:
    panel: str
    ref_id: str
    expr: str  # as written in the dashboard, variables unsubstituted
    legend: str

    @property
    def name(self) -> str:
        return f"{self.panel} [{self.ref_id}]"

    def substituted(self, variables: dict[str, str]) -> str:
        expr = self.expr
        for variable, value in variables.items():
            expr = expr.replace(variable, value)
        return expr

    def legend_labels(self) -> set[str]:
        return set(LEGEND_LABEL.findall(self.legend))

    @property
    def is_quantile(self) -> bool:
        return self.expr.startswith("histogram_quantile(")


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panel_queries() -> list[PanelQuery]:
    return [PanelQuery(panel["title"], target["refId"], target["expr"], target.get("legendFormat", ""))
            for panel in dashboard()["panels"] for target in panel.get("targets", [])]


def variable_queries() -> list[str]:
    """The series selectors of the dashboard's `label_values(selector, label)` variables."""
    selectors = []
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict) and query["query"].startswith("label_values("):
            selectors.append(query["query"][len("label_values("):].split(",")[0])
    return selectors


def alert_rules() -> list[dict[str, Any]]:
    rules = yaml.safe_load(RULES.read_text())
    return [rule for group in rules["groups"] for rule in group["rules"]]
