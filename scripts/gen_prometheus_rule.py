"""Write the prometheus-operator component's PrometheusRule from deploy/prometheus/rules.yml."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
TARGET = (
    ROOT / "deploy" / "kustomize" / "components" / "prometheus-operator" / "prometheus-rule.yaml"
)
HEADER = (
    "# Generated from deploy/prometheus/rules.yml by scripts/gen_prometheus_rule.py: edit the\n"
    "# rules there and rerun it (tests/test_prometheus.py fails while the two differ).\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line expressions as literal blocks, as a person would write them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render() -> str:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "stylebase",
            "labels": {
                "app.kubernetes.io/name": "stylebase",
                "app.kubernetes.io/part-of": "stylebase",
            },
        },
        "spec": {"groups": groups},
    }
    return HEADER + yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


def main(argv: list[str]) -> int:
    """Write the file, or with --check only report whether it is up to date."""
    text = render()
    if argv[1:] == ["--check"]:
        if TARGET.read_text() != text:
            print(f"{TARGET.relative_to(ROOT)} is out of date: run {Path(__file__).name}")
            return 1
        return 0
    TARGET.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
