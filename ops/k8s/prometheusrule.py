"""Write ops/k8s/base/prometheusrule.yaml from ops/alerts/swgw.rules.yml (run after editing the rules).

    .venv/bin/python ops/k8s/prometheusrule.py

The alert rules have one source, ops/alerts/swgw.rules.yml (promtool-tested); the PrometheusRule
is that file's `groups` wrapped in the Prometheus Operator's resource. tests/packaging/
test_deploy_files.py fails when the two differ.
"""

from __future__ import annotations

from pathlib import Path

import yaml

OPS = Path(__file__).resolve().parents[1]
RULES = OPS / "alerts" / "swgw.rules.yml"
OUT = OPS / "k8s" / "base" / "prometheusrule.yaml"
HEADER = (
    "# GENERATED from ops/alerts/swgw.rules.yml by ops/k8s/prometheusrule.py: edit the rules there, then run it.\n"
    "# Prometheus Operator: your Prometheus resource's ruleSelector must match these labels.\n"
)


def resource() -> dict[str, object]:
    groups = yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    return {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {"name": "swgw", "labels": {"app.kubernetes.io/name": "swgw", "role": "alert-rules"}},
        "spec": {"groups": groups},
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the longer exprs) as literal blocks, as in the rules file."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def main() -> None:
    body = yaml.dump(resource(), Dumper=_Dumper, sort_keys=False, width=120, allow_unicode=True)
    OUT.write_text(HEADER + body, encoding="utf-8")


if __name__ == "__main__":
    main()
