"""Render the Helm chart deploy/helm/mmfusion into the plain manifests of deploy/k8s/.

    python deploy/k8s/render.py                  # rewrite deploy/k8s/mmfusion.yaml from the chart's defaults
    python deploy/k8s/render.py --check          # exit 1 when the file is not what the chart renders
    python deploy/k8s/render.py --values JSON    # print the objects made with these values (helm template)
    python deploy/k8s/render.py --lint           # helm lint --strict for Kubernetes 1.30

Rendering uses Helm's own Go engine (the pip package helm-python-sdk), no helm binary and no cluster.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

DEPLOY = Path(__file__).resolve().parent.parent
CHART = DEPLOY / "helm" / "mmfusion"
PLAIN = DEPLOY / "k8s" / "mmfusion.yaml"
RELEASE = "mmfusion"
KUBE_VERSION = "v1.30.0"
# Objects in the order kubectl apply needs them (what is referenced before what references it).
ORDER = (
    "serviceaccount.yaml",
    "secret.yaml",
    "pvc.yaml",
    "service.yaml",
    "deployment.yaml",
    "hpa.yaml",
    "pdb.yaml",
    "networkpolicy.yaml",
)
HEADER = """\
# mmfusion on Kubernetes: rendered from the Helm chart deploy/helm/mmfusion with its default values.
# Do not edit: change the chart and run `python deploy/k8s/render.py` (tests/deploy checks they agree).
# Before applying: create Secret mmfusion-secrets (api-keys.yaml, audit-key.json; docs/deploy.md).
#   kubectl apply -n NAMESPACE -f deploy/k8s/mmfusion.yaml
"""


def render_templates(values: dict[str, Any] | None = None, release: str = RELEASE) -> dict[str, str]:
    """Each template's rendered text by file name (NOTES.txt and empty ones left out)."""
    import helm_python

    with helm_python.Chart.load(CHART) as chart:
        rendered = chart.render(values, name=release, namespace="default")
    manifests = {}
    for path, text in rendered.items():
        name = Path(path).name
        if name == "NOTES.txt" or not text.strip():
            continue
        if name not in ORDER:
            raise ValueError(f"template {name}: not in ORDER of {__file__}; add it there")
        manifests[name] = text
    return manifests


def render(values: dict[str, Any] | None = None, release: str = RELEASE) -> str:
    """One multi-document YAML file of every object the chart makes with these values."""
    manifests = render_templates(values, release)
    documents = [
        f"# Source: mmfusion/templates/{name}\n{manifests[name].strip()}\n" for name in ORDER if name in manifests
    ]
    return HEADER + "---\n" + "---\n".join(documents)


def lint() -> list[str]:
    """helm lint --strict's warnings and errors (informational notes left out)."""
    import helm_python

    report = helm_python.lint(CHART, strict=True, kube_version=KUBE_VERSION)
    return [f"{m['path']}: {m['error']}" for m in report["messages"] if m["severity"] >= 2] + report["errors"]


def main(argv: list[str] | None = None) -> int:
    """Write, check, print or lint; a value the chart refuses exits 1 with Helm's message."""
    import helm_python

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--check", action="store_true", help="compare deploy/k8s/mmfusion.yaml instead of writing")
    action.add_argument("--values", metavar="JSON", help="print the objects made with these values")
    action.add_argument("--lint", action="store_true", help="helm lint --strict")
    args = parser.parse_args(argv)
    try:
        if args.lint:
            problems = lint()
            print("\n".join(problems) or "lint: no problem")
            return 1 if problems else 0
        if args.values is not None:
            sys.stdout.write(render(json.loads(args.values)))
            return 0
        text = render()
    except helm_python.HelmError as error:
        print(f"render.py: error: {error}", file=sys.stderr)
        return 1
    if args.check:
        if (PLAIN.read_text() if PLAIN.exists() else "") != text:
            print(f"{PLAIN}: differs from the chart; run python deploy/k8s/render.py", file=sys.stderr)
            return 1
        return 0
    PLAIN.write_text(text)
    print(f"wrote {PLAIN}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
