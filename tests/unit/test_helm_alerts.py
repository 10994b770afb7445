"""The chart's PrometheusRule: rendered by the real helm, checked and unit-tested by the real promtool.

Both binaries are built from Go modules by tests/cluster/build-tools.sh (`make tools`). promtool's
rule tests feed the alerts synthetic series, labelled the way a ServiceMonitor scrape labels the
operator's metrics, and assert which alerts fire when, and which stay silent on a healthy operator.
The metric names the rules use are checked against what the operator exports.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from lora_operator.metrics import OperatorMetrics
from testground.tools import tools_dir

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "lora-operator"
SCRAPE = 'job="rel-lora-operator-metrics", namespace="lora-system"'
ACTIVE = f'{SCRAPE}, instance="10.0.0.1:8080", pod="rel-lora-operator-a"'
STANDBY = f'{SCRAPE}, instance="10.0.0.2:8080", pod="rel-lora-operator-b"'
TARGET = {"job": "rel-lora-operator-metrics", "namespace": "lora-system"}


def render(*values: str) -> subprocess.CompletedProcess:
    """`helm template` of the PrometheusRule with `--set` values."""
    sets = [arg for value in ("metrics.prometheusRule.enabled=true", *values) for arg in ("--set", value)]
    return subprocess.run(
        [str(tools_dir() / "helm"), "template", "rel", str(CHART), "-n", "lora-system", "--kube-version", "1.34.0",
         *sets, "--show-only", "templates/prometheusrule.yaml"], capture_output=True, text=True)


def rule_file(rendered: str, folder: Path) -> Path:
    path = folder / "rules.yaml"
    path.write_text(yaml.safe_dump({"groups": yaml.safe_load(rendered)["spec"]["groups"]}))
    return path


@pytest.fixture(scope="module")
def rules(tmp_path_factory) -> Path:
    """The rule groups as rendered with the chart's ServiceMonitor, as a rule file promtool reads."""
    rendered = render("metrics.serviceMonitor.enabled=true")
    assert rendered.returncode == 0, rendered.stderr
    return rule_file(rendered.stdout, tmp_path_factory.mktemp("rules"))


def promtool(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(tools_dir() / "promtool"), *args], capture_output=True, text=True)


def test_promtool_accepts_the_rules(rules):
    check = promtool("check", "rules", str(rules))
    assert check.returncode == 0, check.stdout + check.stderr
    assert "SUCCESS: 7 rules found" in check.stdout


def test_without_the_service_monitor_the_scrape_selector_is_required(tmp_path):
    refused = render()
    assert refused.returncode != 0
    assert "metrics.prometheusRule.enabled needs metrics.serviceMonitor.enabled" in refused.stderr
    own = render('metrics.prometheusRule.scrapeSelector=job="lora"\\, cluster="gpu-1"')
    assert own.returncode == 0, own.stderr
    assert 'lora_operator_queue_length{job="lora", cluster="gpu-1"}' in own.stdout
    assert "rel-lora-operator-metrics" not in own.stdout
    check = promtool("check", "rules", str(rule_file(own.stdout, tmp_path)))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_rules_use_only_metrics_the_operator_exports(rules):
    metrics = OperatorMetrics()  # every series set once, as a running operator sets them
    metrics.count_jobs_with(lambda: {"Queued": 1})
    metrics.set_queue_length(1)
    metrics.set_gpu_nodes(busy=1, free=1)
    metrics.observe_admission(0.2)
    metrics.count_retry("Crashed")
    metrics.count_reconcile_error("reconcile")
    metrics.set_job_progress("team-a", "corgi", 0.5, sps=1.0, loss=0.1)
    metrics.pass_seconds.observe(0.01)
    families = list(metrics.registry.collect())
    exported = {f.name for f in families} | {sample.name for f in families for sample in f.samples}
    used = set(re.findall(r"lora_operator_[a-z_]+", rules.read_text()))
    assert used and used <= exported, sorted(used - exported)


def alert(name: str, summary: str, description: str | None = None, **labels: str) -> dict:
    """An expected alert: its labels, and its annotations as the templates must render them
    (`description` None: the rule's own, which must then be plain text)."""
    severity = "critical" if name == "LoraOperatorDown" else "warning"
    annotations = {"summary": summary} | ({"description": description} if description else {})
    return {"exp_labels": {"severity": severity, **labels}, "exp_annotations": annotations}


def with_plain_descriptions(expected: list[dict], rule: dict) -> list[dict]:
    description = " ".join(rule["annotations"]["description"].split())
    for item in expected:
        if "description" not in item["exp_annotations"]:
            assert "{{" not in description, f"{rule['alert']}: give the rendered description"
            item["exp_annotations"]["description"] = description
    return expected


DOWN = alert("LoraOperatorDown", "No lora-operator replica has been scraped for 10 minutes.",
             "Nothing admits, retries or finishes LoraTrainingJobs in lora-system while no replica runs. "
             "Check the Deployment rel-lora-operator and its logs.", **TARGET)


def progress(replica: str, values: str) -> tuple[str, str]:
    """Job team-a/corgi's progress as scraped from `replica` (its own labels exported_*)."""
    return f'lora_operator_job_progress_ratio{{{replica}, exported_namespace="team-a", exported_job="corgi"}}', values


def queue(waiting: int, free: int, busy: int | None, admissions: str | None = None) -> list[tuple[str, str]]:
    """90 minutes of an active replica with `waiting` jobs queued and that many free / busy GPU nodes."""
    series = [(f"lora_operator_queue_length{{{ACTIVE}}}", f"{waiting}x90"),
              (f'lora_operator_gpu_nodes{{{ACTIVE}, state="free"}}', f"{free}x90")]
    if busy is not None:
        series.append((f'lora_operator_gpu_nodes{{{ACTIVE}, state="busy"}}', f"{busy}x90"))
    if admissions is not None:
        series.append((f"lora_operator_admissions_total{{{ACTIVE}}}", admissions))
    return series


def latency(le: str, values: str) -> tuple[str, str]:
    return f'lora_operator_admission_latency_seconds_bucket{{{ACTIVE}, le="{le}"}}', values


CASES = [
    # (what, input series, alert, evaluated at, expected alerts)
    ("no replica up", [(f"up{{{ACTIVE}}}", "0x30"), (f"up{{{STANDBY}}}", "0x30")],
     "LoraOperatorDown", "15m", [DOWN]),
    ("nothing scraped at all", [('up{job="other", namespace="lora-system"}', "1x30")],
     "LoraOperatorDown", "15m", [DOWN]),
    ("the standby is down, the active is up", [(f"up{{{ACTIVE}}}", "1x30"), (f"up{{{STANDBY}}}", "0x30")],
     "LoraOperatorDown", "15m", []),
    ("a handler keeps raising", [(f'lora_operator_reconcile_errors_total{{{ACTIVE}, handler="reconcile"}}', "0+1x60")],
     "LoraOperatorReconcileErrors", "40m",
     [alert("LoraOperatorReconcileErrors", "lora-operator handler reconcile keeps raising.", handler="reconcile")]),
    ("jobs wait, nodes are free, nothing is admitted", queue(3, free=2, busy=None, admissions="5x90"),
     "LoraJobsWaitingWhileNodesAreFree", "65m", [alert(
         "LoraJobsWaitingWhileNodesAreFree", "LoraTrainingJobs have waited 30 minutes while GPU nodes are free.",
         "3 or more jobs wait and nothing was admitted. Usually the waiting jobs ask for a gpuType, nodeSelector or "
         "toleration no free node offers, or their namespace holds its scheduling.namespaceNodeLimits (`kubectl lora "
         "list` shows them); otherwise see the operator log.")]),
    ("jobs wait, nodes are free, admissions go on", queue(3, free=2, busy=None, admissions="5+1x90"),
     "LoraJobsWaitingWhileNodesAreFree", "65m", []),
    ("jobs wait and there is no GPU node", queue(2, free=0, busy=0),
     "LoraNoGpuNodes", "20m", [alert("LoraNoGpuNodes", "LoraTrainingJobs are queued and the operator sees no GPU node.",
                                     "No Ready node advertises nvidia.com/gpu, so no job can be admitted. Check the "
                                     "GPU nodes and their device plugin.")]),
    ("jobs wait behind busy GPU nodes", queue(2, free=0, busy=4),
     "LoraNoGpuNodes", "20m", []),
    ("admissions take 30 to 60 s", [
        latency("30.0", "0x40"),
        latency("60.0", "0+2x40"),
        latency("+Inf", "0+2x40")],
     "LoraAdmissionSlow", "35m", [alert("LoraAdmissionSlow", "Admission p99 is 59.7s (over 30 s).")]),
    ("admissions take under a second", [
        latency("1.0", "0+2x40"),
        latency("30.0", "0+2x40"),
        latency("60.0", "0+2x40"),
        latency("+Inf", "0+2x40")],
     "LoraAdmissionSlow", "35m", []),
    ("a crash every 5 minutes", [(f'lora_operator_retries_total{{{ACTIVE}, reason="Crashed"}}', "0+0.2x90")],
     "LoraTrainingCrashing", "80m", [alert("LoraTrainingCrashing", "12 trainer crashes in the last hour (over 5).")]),
    ("disruptions are not crashes", [(f'lora_operator_retries_total{{{ACTIVE}, reason="Disrupted"}}', "0+0.2x90")],
     "LoraTrainingCrashing", "80m", []),
    ("a job stuck at 40 %; the standby's frozen copy too", [
        progress(ACTIVE, "0.4x150"),
        progress(STANDBY, "0.4x150")],
     "LoraJobStalled", "100m", [alert("LoraJobStalled", "LoraTrainingJob team-a/corgi has made no progress for 90 "
                                     "minutes.", exported_namespace="team-a", exported_job="corgi", **TARGET)]),
    ("a job stuck at 40 % for 70 minutes: not yet", [
        progress(ACTIVE, "0.4x150")],
     "LoraJobStalled", "70m", []),
    ("a job moving on the active replica, frozen on the standby", [
        progress(ACTIVE, "0+0.005x150"),
        progress(STANDBY, "0.1x150")],
     "LoraJobStalled", "100m", []),
]


@pytest.mark.parametrize(("what", "series", "name", "at", "expected"), CASES, ids=[c[0] for c in CASES])
def test_alert_fires_exactly_when_it_should(rules, tmp_path, what, series, name, at, expected):
    rule = next(r for g in yaml.safe_load(rules.read_text())["groups"] for r in g["rules"] if r["alert"] == name)
    expected = with_plain_descriptions(expected, rule)
    tests = {"rule_files": [str(rules)], "evaluation_interval": "1m", "tests": [{
        "name": what, "interval": "1m",
        "input_series": [{"series": s, "values": v} for s, v in series],
        "alert_rule_test": [{"eval_time": at, "alertname": name, "exp_alerts": expected}],
    }]}
    path = tmp_path / "test.yaml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    run = promtool("test", "rules", str(path))
    assert run.returncode == 0, run.stdout + run.stderr
