"""Shared pieces of the deployment tests: the chart rendered by Helm's engine, Kubernetes schemas, serve's parser."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from mmfusion.cli.main import build_parser

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
CHART = DEPLOY / "helm" / "mmfusion"
RENDER = DEPLOY / "k8s" / "render.py"
K8S_VERSION = "1.30"  # the oldest Kubernetes the manifests are checked against (grpc probes: GA in 1.27)
SECRETS_DIR = "/run/mmfusion/secrets"

# Value sets the chart is rendered with: each a way an operator runs it.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "gpu": {"gpu": {"enabled": True, "runtimeClassName": "nvidia"}},
    "tls-mtls-jwt-policy": {
        "tls": {"enabled": True, "secretName": "mmfusion-tls", "clientCA": True},
        "auth": {
            "apiKeys": True,
            "jwt": {"secret": True, "publicKey": True, "audience": "mmfusion", "issuer": "https://id.example"},
            "maxAuthFailures": 10,
            "policyConfigMap": "mmfusion-policy",
        },
        "audit": {"failClosed": True, "fsync": "never"},
        "serve": {"rateLimit": 20, "burst": 40, "maxStreams": 4, "trustedProxies": ["10.0.0.0/8"]},
    },
    "pvc-batching": {
        "modelRepository": {"source": "persistentVolumeClaim", "persistentVolumeClaim": {"create": True}},
        "models": [{"name": "pcb-template", "cpuMillicores": 500, "memoryMiB": 256}],
        "serve": {"maxBatchSize": 16, "maxQueueDelayUs": 4000, "preferredBatchSizes": [4, 8], "maxQueueSize": 128},
        "autoscaling": {"targetCPUUtilization": 80},
        "networkPolicy": {"enabled": True, "grpcFrom": [{"namespaceSelector": {"matchLabels": {"team": "line"}}}]},
    },
    "configmaps-created-secret": {
        "modelRepository": {
            "source": "configMaps",
            "configMaps": [
                {
                    "folder": "call-centre",
                    "configMap": "mmfusion-model-call-centre",
                    "items": [{"key": "config.yaml", "path": "config.yaml"}],
                }
            ],
        },
        "models": [{"name": "call-centre", "cpuMillicores": 500, "memoryMiB": 384}],
        "audit": {"keyed": False},
        "secrets": {"create": True, "files": {"api-keys.yaml": "keys: []\n"}},
        "autoscaling": {"enabled": False},
        "serve": {"metricsPort": None, "requireManifest": False, "noCacheModels": ["call-centre"]},
    },
}


def run_render(*arguments: str) -> subprocess.CompletedProcess:
    """deploy/k8s/render.py, the one place that turns the chart into manifests (Helm's Go engine via pip).

    It runs in a child process so that Helm's Go runtime never loads into the test process (it would stay,
    with its threads, for every later test of the session).
    """
    if importlib.util.find_spec("helm_python") is None:
        pytest.skip("helm-python-sdk (installed by make setup) renders the chart")
    return subprocess.run(
        [sys.executable, str(RENDER), *arguments], capture_output=True, text=True, timeout=120, cwd=REPO
    )


def render(values: dict[str, Any] | None = None) -> str:
    """The chart's objects for these values as YAML; a refusal fails with Helm's message (RenderRefused)."""
    result = run_render("--values", json.dumps(values or {}))
    if result.returncode != 0:
        raise RenderRefused(result.stderr.strip())
    return result.stdout


class RenderRefused(Exception):
    """The chart refused the values (a fail in a template, or values.schema.json)."""


@cache
def _rendered(variant: str) -> str:
    return render(VARIANTS[variant])


def rendered(variant: str) -> list[dict]:
    """The objects the chart makes with one variant's values (fresh copies: tests may change them)."""
    return [doc for doc in yaml.safe_load_all(_rendered(variant)) if doc]


def find(docs: list[dict], kind: str, name_suffix: str = "") -> dict:
    """The one object of a kind (whose name ends with name_suffix)."""
    matches = [doc for doc in docs if doc["kind"] == kind and doc["metadata"]["name"].endswith(name_suffix)]
    assert len(matches) == 1, f"expected one {kind} *{name_suffix}, got {[m['metadata']['name'] for m in matches]}"
    return matches[0]


def serve_container(docs: list[dict]) -> dict:
    return next(
        c for c in find(docs, "Deployment")["spec"]["template"]["spec"]["containers"] if c["name"] == "mmfusion"
    )


def serve_flags() -> set[str]:
    """Every option string `mmfusion serve` defines, spelt out (argparse would also take abbreviations)."""
    parser = build_parser()
    commands = next(action for action in parser._actions if isinstance(action, argparse._SubParsersAction))
    return set(commands.choices["serve"]._option_string_actions)


def parse_serve(container: dict) -> argparse.Namespace:
    """The container's command line through mmfusion's own parser; a flag serve lacks fails the test."""
    assert container["command"][:2] == ["mmfusion", "serve"], container["command"]
    args = container.get("args", [])
    spelt = {arg.split("=", 1)[0] for arg in args if arg.startswith("--")}
    assert spelt <= serve_flags(), f"not flags of mmfusion serve (abbreviated?): {sorted(spelt - serve_flags())}"
    try:
        return build_parser().parse_args([*container["command"][1:], *args])
    except SystemExit:
        pytest.fail(f"mmfusion serve refuses the arguments {args} (its usage error is above)")


@cache
def _schema_files() -> tuple[Path, Path]:
    import kubernetes_validate

    folder = resources.files(kubernetes_validate) / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    return Path(str(folder)), Path(str(folder / "_definitions.json"))


def validate_kubernetes(document: dict) -> None:
    """A whole object against the Kubernetes schema of K8S_VERSION, strict (unknown fields are errors)."""
    import kubernetes_validate

    kubernetes_validate.validate(document, K8S_VERSION, strict=True)


def validate_kubernetes_part(instance: Any, definition: str) -> None:
    """A piece of an object (a Container, a Volume) against its Kubernetes schema, e.g. 'container-v1'."""
    folder, definitions_file = _schema_files()
    from referencing import Registry, Resource

    schema = json.loads((folder / f"{definition}.json").read_text())
    definitions = Resource.from_contents(json.loads(definitions_file.read_text()))
    registry = definitions @ (Resource.from_contents(schema) @ Registry())
    jsonschema.Draft202012Validator(schema, registry=registry).validate(instance)


def init_script(docs: list[dict]) -> tuple[str, dict[str, str]]:
    """The prepare-files init container's shell script and its environment."""
    pod = find(docs, "Deployment")["spec"]["template"]["spec"]
    init = next(c for c in pod["initContainers"] if c["name"] == "prepare-files")
    assert init["command"][:2] == ["/bin/sh", "-c"]
    return init["command"][2], {item["name"]: item["value"] for item in init["env"]}


def run_init_script(script: str, environment: dict[str, str]) -> None:
    """Run the init container's script here, with its folders moved to test folders."""
    subprocess.run(["/bin/sh", "-c", script], env={**os.environ, **environment}, check=True, timeout=30)


def kubelet_volume(root: Path, files: dict[str, bytes], mode: int) -> Path:
    """A Secret/ConfigMap volume as the kubelet lays it out: files in a timestamped folder, ..data, links."""
    root.mkdir(parents=True)
    stamp = root / "..2026_01_01_00_00_00.000000001"
    for relative, content in files.items():
        target = stamp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
    (root / "..data").symlink_to(stamp.name)
    for top in sorted({relative.split("/")[0] for relative in files}):
        (root / top).symlink_to(f"..data/{top}")
    return root


def load_yaml_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
