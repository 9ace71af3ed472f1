#!/usr/bin/env python3
"""Renders and lints a Helm chart with Helm's own Go SDK (the PyPI package helm-python-sdk, which
bundles Helm v4 as a shared library), for the chart tests in tests/tests/chart.rs.

    render.py render CHART [-f VALUES.yaml]... [--set KEY=VALUE]... [--name N] [--namespace NS]
        Like `helm template`: coalesces the chart's defaults with the values files and --set
        arguments (later wins), validates them against values.schema.json, renders, and prints the
        manifests as one YAML stream in Helm's install order, each with a `# Source:` comment.
    render.py lint CHART [-f VALUES.yaml]... [--set KEY=VALUE]... [--strict]
        Like `helm lint`: prints one line per finding; exits 1 on errors (or warnings with --strict).

Errors (a refused value, a template failure) go to stderr with exit status 1. Install the engine
with `python3 -m pip install helm-python-sdk`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

try:
    import helm_python as helm
except ImportError:  # pragma: no cover - reported to the test
    sys.stderr.write(
        "render.py: the Python module helm_python is missing; "
        "install it with: python3 -m pip install helm-python-sdk\n"
    )
    sys.exit(3)

# Helm's install order (pkg/release/v1/util/kind_sorter.go): what `helm template` prints first.
INSTALL_ORDER = [
    "PriorityClass", "Namespace", "NetworkPolicy", "ResourceQuota", "LimitRange",
    "PodSecurityPolicy", "PodDisruptionBudget", "ServiceAccount", "Secret", "SecretList",
    "ConfigMap", "StorageClass", "PersistentVolume", "PersistentVolumeClaim",
    "CustomResourceDefinition", "ClusterRole", "ClusterRoleList", "ClusterRoleBinding",
    "ClusterRoleBindingList", "Role", "RoleList", "RoleBinding", "RoleBindingList", "Service",
    "DaemonSet", "Pod", "ReplicationController", "ReplicaSet", "Deployment",
    "HorizontalPodAutoscaler", "StatefulSet", "Job", "CronJob", "IngressClass", "Ingress",
    "APIService", "MutatingWebhookConfiguration", "ValidatingWebhookConfiguration",
]


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Helm's merge of user values: maps merge key by key, anything else is replaced."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def user_values(files: list[str], sets: list[str]) -> dict[str, Any]:
    """The values given on the command line, in Helm's order: files first, then --set."""
    values: dict[str, Any] = {}
    for path in files:
        with open(path, encoding="utf-8") as f:
            values = merge(values, helm.values_from_yaml(f.read()) or {})
    for expr in sets:
        values = merge(values, helm.parse_set_string(expr))
    return values


def kind_of(document: str) -> str:
    for line in document.splitlines():
        if line.startswith("kind:"):
            return line.split(":", 1)[1].strip().strip("'\"")
    return ""


def documents(rendered: dict[str, str]) -> list[tuple[str, str]]:
    """(source, document) pairs of the rendered manifests, as `helm template` splits them."""
    out = []
    for source in sorted(rendered):
        name = source.rsplit("/", 1)[-1]
        if name.startswith("_") or name.endswith(".txt"):
            continue
        for doc in rendered[source].split("\n---"):
            doc = doc.strip("\n")
            if doc.startswith("---"):
                doc = doc[3:].lstrip("\n")
            body = [l for l in doc.splitlines() if l.strip() and not l.lstrip().startswith("#")]
            if body:
                out.append((source, doc))
    rank = {kind: i for i, kind in enumerate(INSTALL_ORDER)}
    # Stable: within a kind, the order of the templates.
    return sorted(out, key=lambda sd: rank.get(kind_of(sd[1]), len(INSTALL_ORDER)))


def render(args: argparse.Namespace) -> int:
    values = user_values(args.values, args.set)
    with helm.Chart.load(args.chart) as chart:
        # `helm template` validates the defaults coalesced with the user's values.
        chart.validate_schema(chart.merge_values(values))
        rendered = chart.render(
            values, name=args.name, namespace=args.namespace, is_install=True, revision=1
        )
    stream = []
    for source, doc in documents(rendered):
        stream.append(f"---\n# Source: {source}\n{doc}\n")
    sys.stdout.write("".join(stream))
    return 0


def lint(args: argparse.Namespace) -> int:
    values = user_values(args.values, args.set)
    report = helm.lint(args.chart, values or None, strict=args.strict, namespace=args.namespace)
    severities = {0: "UNKNOWN", 1: "INFO", 2: "WARNING", 3: "ERROR"}
    worst = 0
    for message in report.get("messages") or []:
        severity = int(message.get("severity", 0))
        worst = max(worst, severity)
        print(f"[{severities.get(severity, severity)}] {message.get('path', '')}: {message.get('error', '')}")
    for error in report.get("errors") or []:
        print(f"[ERROR] {error}")
        worst = 3
    print(f"{report.get('total_charts_linted', 0)} chart(s) linted")
    return 1 if worst >= 3 or (args.strict and worst >= 2) else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("render", "lint"):
        p = sub.add_parser(name)
        p.add_argument("chart")
        p.add_argument("-f", "--values", action="append", default=[])
        p.add_argument("--set", action="append", default=[])
        p.add_argument("--namespace", default="agentgate-system")
        if name == "render":
            p.add_argument("--name", default="agentgate")
        else:
            p.add_argument("--strict", action="store_true")
    args = parser.parse_args()
    try:
        return render(args) if args.command == "render" else lint(args)
    except helm.HelmError as e:
        sys.stderr.write(f"Error: {e}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
