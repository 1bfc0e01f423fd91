"""The KServe example: a ServingRuntime and an InferenceService of the fields KServe defines, running serve for real.

KServe's CRDs are not in the Kubernetes schemas: their own fields are checked against KServe's types
(pkg/apis/serving: ServingRuntimeSpec, InferenceService PredictorSpec/ModelSpec), and every embedded
Kubernetes piece (Container, Volume, ResourceRequirements, ObjectMeta) against the Kubernetes 1.30 schema.
"""

from __future__ import annotations

import pytest

from tests.deploy.conftest import DEPLOY, load_yaml_documents, parse_serve, validate_kubernetes_part

KSERVE = DEPLOY / "kserve"
# KServe's InferenceServiceProtocol values (pkg/constants): what protocolVersion(s) may say.
PROTOCOLS = {"v1", "v2", "grpc-v1", "grpc-v2"}
SERVING_RUNTIME_FIELDS = {  # ServingRuntimeSpec with its inlined ServingRuntimePodSpec
    "supportedModelFormats",
    "multiModel",
    "disabled",
    "protocolVersions",
    "workerSpec",
    "containers",
    "volumes",
    "nodeSelector",
    "affinity",
    "tolerations",
    "labels",
    "annotations",
    "imagePullSecrets",
    "hostIPC",
    "grpcEndpoint",
    "grpcDataEndpoint",
    "httpDataEndpoint",
    "replicas",
    "storageHelper",
    "builtInAdapter",
}
MODEL_FORMAT_FIELDS = {"name", "version", "autoSelect", "priority"}
PREDICTOR_FIELDS_USED = {"minReplicas", "maxReplicas", "model"}  # ComponentExtensionSpec + PredictorSpec
MODEL_FIELDS_USED = {"modelFormat", "runtime", "protocolVersion", "storageUri", "resources"}  # ModelSpec


def _one(kind: str) -> dict:
    documents = [doc for path in sorted(KSERVE.glob("*.yaml")) for doc in load_yaml_documents(path)]
    (document,) = [doc for doc in documents if doc["kind"] == kind]
    validate_kubernetes_part(document["metadata"], "objectmeta-meta-v1")
    return document


def check_serving_runtime(runtime: dict) -> None:
    """AssertionError or a schema ValidationError unless every field is one KServe (or Kubernetes) defines."""
    assert runtime["apiVersion"] == "serving.kserve.io/v1alpha1"
    spec = runtime["spec"]
    assert set(spec) <= SERVING_RUNTIME_FIELDS, set(spec) - SERVING_RUNTIME_FIELDS
    assert spec["containers"], "a ServingRuntime needs its containers"
    for model_format in spec["supportedModelFormats"]:
        assert set(model_format) <= MODEL_FORMAT_FIELDS and model_format["name"]
    assert set(spec["protocolVersions"]) <= PROTOCOLS and "grpc-v2" in spec["protocolVersions"]
    for container in spec["containers"]:
        validate_kubernetes_part(container, "container-v1")
    for volume in spec.get("volumes", []):
        validate_kubernetes_part(volume, "volume-v1")


def test_serving_runtime_fields_are_kserves():
    check_serving_runtime(_one("ServingRuntime"))


def test_serving_runtime_runs_serve_on_its_one_h2c_port():
    (container,) = _one("ServingRuntime")["spec"]["containers"]
    assert container["name"] == "kserve-container"
    (port,) = container["ports"]  # KServe exposes one port; h2c names it cleartext HTTP/2 (gRPC)
    assert port["name"] == "h2c"
    args = parse_serve(container)
    assert args.port == port["containerPort"] and args.host == "0.0.0.0"
    assert args.models == ["/mnt/models"]  # where KServe's storage puts the storageUri's folder
    assert args.require_manifest
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == args.port
    env = {item["name"]: item for item in container["env"]}
    assert env[args.jwt_secret_env]["valueFrom"]["secretKeyRef"]["key"] == "jwt-secret"
    assert args.jwt_audience  # serve refuses JWT settings without an audience
    annotations = _one("ServingRuntime")["metadata"]["annotations"]
    assert int(annotations["prometheus.kserve.io/port"]) == args.metrics_port
    mounts = {mount["mountPath"] for mount in container["volumeMounts"]}
    assert {"/tmp", env["MMFUSION_CACHE"]["value"]} <= mounts  # writable places on a read-only root


def test_inference_service_uses_the_runtime_over_grpc_v2():
    service = _one("InferenceService")
    runtime = _one("ServingRuntime")
    assert service["apiVersion"] == "serving.kserve.io/v1beta1"
    predictor = service["spec"]["predictor"]
    assert set(service["spec"]) == {"predictor"} and set(predictor) <= PREDICTOR_FIELDS_USED
    model = predictor["model"]
    assert set(model) <= MODEL_FIELDS_USED
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"]["version"]) in formats
    assert model["protocolVersion"] in runtime["spec"]["protocolVersions"]
    assert model["storageUri"].split("://")[0] in {"pvc", "s3", "gs", "https", "hdfs", "webhdfs", "oci", "hf"}
    validate_kubernetes_part(model["resources"], "resourcerequirements-v1")
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]


@pytest.mark.parametrize(
    "change",
    [
        lambda spec: spec.update(protocolVersions=["grpc-v3"]),
        lambda spec: spec.update(contaners=spec["containers"]),
        lambda spec: spec["containers"][0].update(readinesProbe={}),
        lambda spec: spec["volumes"][0].update(emptyDirectory={}),
    ],
    ids=["protocol", "spec-field", "container-field", "volume-field"],
)
def test_the_checks_catch_a_wrong_field(change):
    import jsonschema

    runtime = _one("ServingRuntime")
    change(runtime["spec"])
    with pytest.raises((AssertionError, jsonschema.ValidationError)):
        check_serving_runtime(runtime)
