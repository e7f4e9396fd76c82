"""The shipped alert rules: valid for Prometheus' own checker, every alert unit-tested with
promtool (charts/gptomni/files/prometheus-rules.test.yaml), and the k8s/monitoring/
manifests generated from the chart's files."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from tests.monitoring_files import ROOT, RULE_TESTS, RULES, alert_rules
from tests.system_parts import require_binary


def promtool() -> Path:
    return require_binary("promtool", "40-prometheus.sh")


def run(*command: str | Path, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_promtool_checks_the_rules() -> None:
    result = run(promtool(), "check", "rules", RULES)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_every_alert_fires_and_stays_quiet_as_its_unit_tests_say() -> None:
    result = run(promtool(), "test", "rules", RULE_TESTS)
    assert result.returncode == 0, result.stdout + result.stderr
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        own = [case for case in cases if case["alertname"] == rule["alert"]]
        firing = [alert for case in own for alert in case["exp_alerts"]]
        assert firing, f"{rule['alert']}: no case where it fires"
        assert any(case["exp_alerts"] == [] for case in own), f"{rule['alert']}: no case where it stays quiet"
        for alert in firing:  # the labels and every annotation it fires with
            assert set(rule["labels"].items()) <= set(alert["exp_labels"].items()), rule["alert"]
            assert set(alert["exp_annotations"]) == set(rule["annotations"]), rule["alert"]


def test_a_wrong_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: the same tests with one expected annotation changed do."""
    shutil.copy(RULES, tmp_path / RULES.name)
    tests = RULE_TESTS.read_text()
    assert tests.count("(p95 14.61s)") == 1
    (tmp_path / RULE_TESTS.name).write_text(tests.replace("(p95 14.61s)", "(p95 14.6s)"))
    result = run(promtool(), "test", "rules", tmp_path / RULE_TESTS.name)
    assert result.returncode != 0
    assert "GPTOmniTimeToFirstTokenHigh" in result.stdout + result.stderr


def test_k8s_monitoring_files_are_generated_from_the_chart_and_current() -> None:
    result = run(sys.executable, ROOT / "scripts" / "generate_monitoring.py", "--check")
    assert result.returncode == 0, result.stderr
    plain = yaml.safe_load((ROOT / "k8s" / "monitoring" / "prometheus-rule.yaml").read_text())
    assert plain["kind"] == "PrometheusRule" and plain["spec"] == yaml.safe_load(RULES.read_text())


def test_the_generator_reports_a_stale_file(tmp_path: Path) -> None:
    """--check fails on an outdated copy: run against a copy of the tree with one edited rule."""
    for part in ("scripts/generate_monitoring.py", "k8s/monitoring", "charts/gptomni/files"):
        source = ROOT / part
        target = tmp_path / part
        target.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copy)(source, target)
    rules = tmp_path / "charts" / "gptomni" / "files" / RULES.name
    rules.write_text(rules.read_text().replace("for: 5m", "for: 7m"))
    script = tmp_path / "scripts" / "generate_monitoring.py"
    stale = run(sys.executable, script, "--check", cwd=tmp_path)
    assert stale.returncode == 1 and "k8s/monitoring/prometheus-rule.yaml" in stale.stderr
    assert run(sys.executable, script, cwd=tmp_path).returncode == 0
    assert run(sys.executable, script, "--check", cwd=tmp_path).returncode == 0
    assert "for: 7m" in (tmp_path / "k8s" / "monitoring" / "prometheus-rule.yaml").read_text()
