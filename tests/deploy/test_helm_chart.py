"""The Helm chart and the plain manifests: valid Kubernetes objects that run `mmfusion serve` as it really is."""

from __future__ import annotations

import re

import pytest
import yaml

from mmfusion.serving.metrics import ServiceMetrics
from tests.deploy.conftest import (
    CHART,
    DEPLOY,
    SECRETS_DIR,
    VARIANTS,
    RenderRefused,
    find,
    load_yaml_documents,
    parse_serve,
    render,
    rendered,
    run_render,
    serve_container,
    validate_kubernetes,
)

PLAIN_FILES = sorted((DEPLOY / "k8s").glob("*.yaml"))


def test_plain_manifests_are_the_chart_rendered_with_its_defaults():
    assert [path.name for path in PLAIN_FILES] == ["mmfusion.yaml"]
    assert PLAIN_FILES[0].read_text() == render(), "deploy/k8s/mmfusion.yaml is stale: python deploy/k8s/render.py"
    assert run_render("--check").returncode == 0


@pytest.mark.parametrize("path", PLAIN_FILES, ids=lambda path: path.name)
def test_plain_manifests_validate_against_kubernetes(path):
    documents = load_yaml_documents(path)
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == [
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "Service",
        "Service",
        "ServiceAccount",
    ]
    for document in documents:
        validate_kubernetes(document)


@pytest.mark.parametrize("variant", VARIANTS)
def test_every_variant_renders_objects_that_validate_against_kubernetes(variant):
    documents = rendered(variant)
    assert documents
    for document in documents:
        validate_kubernetes(document)


def test_a_misspelt_field_fails_the_schema_check():
    """The validation is strict: a typo in a container field is an error, not ignored."""
    from kubernetes_validate import ValidationError

    deployment = find(rendered("default"), "Deployment")
    serve_container(rendered("default"))  # the container exists before we break a copy of it
    deployment["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(ValidationError):
        validate_kubernetes(deployment)


def test_helm_lint_finds_no_problem():
    result = run_render("--lint")
    assert result.returncode == 0 and "no problem" in result.stdout, result.stdout + result.stderr


@pytest.mark.parametrize("variant", VARIANTS)
def test_container_args_are_flags_serve_accepts(variant):
    documents = rendered(variant)
    container = serve_container(documents)
    args = parse_serve(container)
    values = VARIANTS[variant]
    expected_models = [
        model["name"] for model in values.get("models", [{"name": "pcb-inspect"}, {"name": "defect-anomaly"}])
    ]
    assert args.models == expected_models
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert args.port == ports["grpc"]
    assert args.host == "0.0.0.0"  # the pod IP, where kubelet and the Services connect
    if "metrics" in ports:
        annotations = find(documents, "Deployment")["spec"]["template"]["metadata"]["annotations"]
        assert args.metrics_port == ports["metrics"] == int(annotations["prometheus.io/port"])
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/path"] == "/metrics"
        assert args.metrics_host == "0.0.0.0"
    else:
        assert args.metrics_port is None
    assert args.require_manifest is values.get("serve", {}).get("requireManifest", True)


def test_args_carry_every_serve_setting_of_the_values():
    args = parse_serve(serve_container(rendered("tls-mtls-jwt-policy")))
    assert (args.tls_cert, args.tls_key, args.client_ca) == tuple(
        f"{SECRETS_DIR}/{name}" for name in ("tls.crt", "tls.key", "ca.crt")
    )
    assert args.jwt_secret_env == "MMFUSION_JWT_SECRET" and args.jwt_public_key == f"{SECRETS_DIR}/jwt-public.pem"
    assert (args.jwt_audience, args.jwt_issuer, args.max_auth_failures) == ("mmfusion", "https://id.example", 10)
    assert (args.rate_limit, args.burst, args.max_streams, args.trusted_proxy) == (20.0, 40, 4, ["10.0.0.0/8"])
    assert args.policy == "/etc/mmfusion/policy/policy.yaml"
    assert args.audit_fail_closed and args.audit_fsync == "never"
    batching = parse_serve(serve_container(rendered("pvc-batching")))
    assert (batching.max_batch_size, batching.max_queue_delay_us, batching.max_queue_size) == (16, 4000, 128)
    assert batching.preferred_batch_size == [4, 8]
    defaults = parse_serve(serve_container(rendered("default")))
    assert defaults.api_keys == f"{SECRETS_DIR}/api-keys.yaml"
    assert defaults.audit_key_file == f"{SECRETS_DIR}/audit-key.json"
    assert defaults.audit_log == "/var/log/mmfusion/audit/audit.log"
    unkeyed = parse_serve(serve_container(rendered("configmaps-created-secret")))
    assert unkeyed.audit_unkeyed and unkeyed.audit_key_file is None and unkeyed.no_cache_model == ["call-centre"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_probes_ask_grpc_health_on_the_grpc_port(variant):
    documents = rendered(variant)
    container = serve_container(documents)
    args = parse_serve(container)
    probes = [container[name] for name in ("startupProbe", "readinessProbe", "livenessProbe")]
    if args.tls_cert is None:  # plaintext gRPC: kubelet's own grpc.health.v1 client, overall status ("")
        for probe in probes:
            assert probe["grpc"]["port"] == args.port and probe["grpc"].get("service", "") == ""
    else:  # serve's TLS front: kubelet's grpc probe cannot speak TLS, so it checks that the front accepts
        for probe in probes:
            assert probe["tcpSocket"]["port"] == "grpc"
    for service in (find(documents, "Service", "mmfusion"), find(documents, "Service", "-headless")):
        (port,) = service["spec"]["ports"]
        assert port["targetPort"] == "grpc" and port["port"] == args.port
    assert find(documents, "Service", "-headless")["spec"]["clusterIP"] == "None"


def test_the_pod_waits_out_serves_grace_period():
    documents = rendered("default")
    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    args = parse_serve(serve_container(documents))
    sleep = int(serve_container(documents)["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] > args.grace + sleep


def _adapter_rule() -> dict:
    (rule,) = yaml.safe_load((DEPLOY / "helm" / "prometheus-adapter-values.yaml").read_text())["rules"]["custom"]
    return rule


def test_hpa_scales_on_a_queue_metric_derived_from_a_series_serve_exports():
    documents = rendered("default")
    hpa = find(documents, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": find(documents, "Deployment")["metadata"]["name"],
    }
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    rule = _adapter_rule()
    assert metric["pods"]["metric"]["name"] == rule["name"]["as"]
    series = re.match(r"^(\w+)\{", rule["seriesQuery"]).group(1)
    assert rule["name"]["matches"] == f"^{series}$"
    assert set(rule["resources"]["overrides"]) == {"namespace", "pod"}
    # The series is in serve's registry under exactly this name, and counts queued microseconds.
    metrics = ServiceMetrics()
    metrics.record_batch("pcb-inspect", 1, batch_size=2, queue_seconds=[0.5, 1.5], compute_seconds=0.1)
    samples = {
        sample.name: sample.value
        for family in metrics.registry.collect()
        for sample in family.samples
        if family.name == series
    }
    assert samples == {series: pytest.approx(2e6)}
    # rate(us per second) / 1e6 = requests waiting on average (Little's law)
    assert "rate(<<.Series>>" in rule["metricsQuery"] and rule["metricsQuery"].rstrip().endswith("/ 1e6")
    assert "replicas" not in find(documents, "Deployment")["spec"]  # the HPA owns the replica count


def test_without_autoscaling_the_deployment_sets_replicas():
    documents = rendered("configmaps-created-secret")
    assert find(documents, "Deployment")["spec"]["replicas"] == 2
    assert not [doc for doc in documents if doc["kind"] == "HorizontalPodAutoscaler"]


def test_pdb_keeps_all_but_one_replica_through_drains():
    documents = rendered("default")
    pdb = find(documents, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"] == find(documents, "Deployment")["spec"]["selector"]["matchLabels"]


@pytest.mark.parametrize("variant", VARIANTS)
def test_secret_files_are_mounted_where_the_args_point(variant):
    documents = rendered(variant)
    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    container = serve_container(documents)
    args = parse_serve(container)
    flags = ("tls_cert", "tls_key", "client_ca", "api_keys", "jwt_public_key", "audit_key_file")
    wanted = {getattr(args, flag) for flag in flags} - {None}
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount for mount in container["volumeMounts"]}
    if not wanted:
        assert "secrets" not in volumes
        return
    assert all(path.startswith(SECRETS_DIR + "/") for path in wanted)
    assert mounts[SECRETS_DIR]["name"] == "secrets" and mounts[SECRETS_DIR]["readOnly"]
    assert volumes["secrets"]["emptyDir"]["medium"] == "Memory"  # copies of keys never touch the node's disk
    projected = volumes["secret-sources"]["projected"]
    items = {item["path"] for source in projected["sources"] for item in source["secret"]["items"]}
    assert items == {path.rsplit("/", 1)[1] for path in wanted}
    assert projected["defaultMode"] == 0o440  # group-readable: fsGroup lets the non-root init container copy them
    init = next(c for c in pod["initContainers"] if c["name"] == "prepare-files")
    init_mounts = {mount["name"]: mount["mountPath"] for mount in init["volumeMounts"]}
    init_env = {item["name"]: item["value"] for item in init["env"]}
    assert init_mounts["secret-sources"] == init_env["SECRET_SOURCES"]
    assert init_mounts["secrets"] == init_env["SECRETS_DIR"] == SECRETS_DIR
    assert "secret-sources" not in {mount["name"] for mount in container["volumeMounts"]}
    secret_names = {source["secret"]["name"] for source in projected["sources"]}
    created = [doc for doc in documents if doc["kind"] == "Secret"]
    if created:
        assert {doc["metadata"]["name"] for doc in created} == secret_names
    env = {item["name"]: item for item in container["env"]}
    if args.jwt_secret_env:
        assert env[args.jwt_secret_env]["valueFrom"]["secretKeyRef"]["key"] == "jwt-secret"
    if args.policy:
        assert mounts["/etc/mmfusion/policy"]["name"] == "policy"
    if args.audit_log:
        audit = mounts["/var/log/mmfusion/audit"]
        assert args.audit_log.startswith(audit["mountPath"] + "/") and audit["subPathExpr"] == "$(POD_NAME)"
        assert env["POD_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"


def test_pod_runs_non_root_on_a_read_only_root_file_system():
    documents = rendered("default")
    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] and pod["securityContext"]["runAsUser"] != 0
    assert pod["automountServiceAccountToken"] is False
    for container in pod["containers"] + pod["initContainers"]:
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] and not context["allowPrivilegeEscalation"]
        assert context["capabilities"]["drop"] == ["ALL"]
    writable = {mount["mountPath"] for mount in serve_container(documents)["volumeMounts"] if not mount.get("readOnly")}
    env = {item["name"]: item.get("value") for item in serve_container(documents)["env"]}
    assert {"/tmp", env["MMFUSION_CACHE"], "/var/log/mmfusion/audit"} <= writable


def test_requests_are_the_server_base_plus_each_model():
    resources = serve_container(rendered("default"))["resources"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    cpu = values["resources"]["base"]["cpuMillicores"] + sum(m["cpuMillicores"] for m in values["models"])
    memory = values["resources"]["base"]["memoryMiB"] + sum(m["memoryMiB"] for m in values["models"])
    assert resources["requests"] == {"cpu": f"{cpu}m", "memory": f"{memory}Mi"}
    assert resources["limits"] == {"memory": f"{memory}Mi"}
    single = serve_container(rendered("pvc-batching"))["resources"]["requests"]
    assert single == {"cpu": f"{values['resources']['base']['cpuMillicores'] + 500}m", "memory": f"{1024 + 256}Mi"}


def test_gpu_variant_asks_for_a_gpu_node_and_the_cuda_image():
    documents = rendered("gpu")
    pod = find(documents, "Deployment")["spec"]["template"]["spec"]
    container = serve_container(documents)
    assert container["image"] == "mmfusion:0.1.0-cuda"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["runtimeClassName"] == "nvidia"
    cpu = serve_container(rendered("default"))
    assert (
        "nvidia.com/gpu" not in cpu["resources"]["limits"]
        and "nodeSelector" not in find(rendered("default"), "Deployment")["spec"]["template"]["spec"]
    )


def test_model_repository_volumes():
    claim = rendered("pvc-batching")
    container = serve_container(claim)
    env = {item["name"]: item.get("value") for item in container["env"]}
    mounts = {mount["name"]: mount for mount in container["volumeMounts"]}
    assert mounts["models"]["mountPath"] == env["MMFUSION_MODELS"] == "/models" and mounts["models"]["readOnly"]
    pvc = find(claim, "PersistentVolumeClaim")
    volumes = {v["name"]: v for v in find(claim, "Deployment")["spec"]["template"]["spec"]["volumes"]}
    assert volumes["models"]["persistentVolumeClaim"] == {"claimName": pvc["metadata"]["name"], "readOnly": True}
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]
    image = serve_container(rendered("default"))
    assert "MMFUSION_MODELS" not in {item["name"] for item in image["env"]}  # the image's own models


def test_network_policy_opens_only_the_serving_ports():
    policy = find(rendered("pvc-batching"), "NetworkPolicy")
    ports = [rule["ports"][0]["port"] for rule in policy["spec"]["ingress"]]
    assert ports == ["grpc", "metrics"]
    assert policy["spec"]["ingress"][0]["from"] == [{"namespaceSelector": {"matchLabels": {"team": "line"}}}]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"auth": {"apiKeys": False}}, "auth: no API keys, JWT or mutual TLS"),
        ({"auth": {"jwt": {"secret": True}}}, "tokens need an audience"),
        ({"tls": {"clientCA": True}}, "tls.clientCA: needs tls.enabled"),
        ({"modelRepository": {"source": "persistentVolumeClaim"}}, "give claimName or create=true"),
        ({"serve": {"workers": 0}}, "workers"),
        ({"serve": {"backend": "tensorflow"}}, "backend"),
        ({"severe": {}}, "severe"),
    ],
    ids=[
        "unauthenticated",
        "jwt-without-audience",
        "mtls-without-tls",
        "pvc-without-claim",
        "workers",
        "backend",
        "typo",
    ],
)
def test_chart_refuses_values_that_cannot_work(values, message):
    with pytest.raises(RenderRefused, match=re.escape(message)):
        render(values)


def test_unauthenticated_only_when_asked_for():
    documents = [
        doc
        for doc in yaml.safe_load_all(
            render({"auth": {"apiKeys": False, "allowUnauthenticated": True}, "audit": {"enabled": False}})
        )
        if doc
    ]
    args = parse_serve(serve_container(documents))
    assert args.api_keys is None and args.jwt_secret_env is None and args.insecure
    assert "initContainers" not in find(documents, "Deployment")["spec"]["template"]["spec"]
