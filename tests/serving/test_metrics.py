"""ServiceMetrics: recorded values appear under Triton-like names and labels; /metrics over HTTP."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from mmfusion.serving.metrics import ServiceMetrics


def samples(metrics: ServiceMetrics) -> dict[tuple[str, tuple], float]:
    """Every exported sample as {(name, sorted labels): value}."""
    parsed = text_string_to_metric_families(metrics.render().decode())
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in parsed
        for sample in family.samples
    }


def test_requests_and_batches_are_exported_under_triton_names():
    metrics = ServiceMetrics()
    for _ in range(3):
        metrics.record_request("defect", 1, success=True)
    metrics.record_request("defect", 1, success=False)
    metrics.batch_hook("defect", 1)(2, [0.001, 0.003], 0.010)
    exported = samples(metrics)
    labels = (("model", "defect"), ("version", "1"))
    assert exported[("nv_inference_request_success", labels)] == 3
    assert exported[("nv_inference_request_failure", labels)] == 1
    assert exported[("nv_inference_exec_count", labels)] == 1
    assert exported[("nv_inference_count", labels)] == 2
    assert abs(exported[("nv_inference_queue_duration_us", labels)] - 4000) < 1e-6
    assert abs(exported[("nv_inference_compute_infer_duration_us", labels)] - 20000) < 1e-6
    assert exported[("mmfusion_batch_size_count", labels)] == 1
    assert exported[("mmfusion_batch_size_sum", labels)] == 2
    assert exported[("mmfusion_batch_size_bucket", (("le", "2.0"), *labels))] == 1
    assert exported[("mmfusion_batch_size_bucket", (("le", "1.0"), *labels))] == 0
    assert exported[("mmfusion_queue_seconds_count", labels)] == 2
    assert abs(exported[("mmfusion_queue_seconds_sum", labels)] - 0.004) < 1e-9
    assert exported[("mmfusion_compute_seconds_count", labels)] == 1


def test_fp32_rechecks_are_counted_from_the_pipelines_running_total():
    metrics = ServiceMetrics()
    total = [5]  # re-checks before serving began (e.g. a warm-up) are not the service's
    hook = metrics.batch_hook("defect", 1, rechecked=lambda: total[0])
    hook(8, [0.0] * 8, 0.01)
    labels = (("model", "defect"), ("version", "1"))
    assert ("mmfusion_fp32_rechecks_total", labels) not in samples(metrics)
    total[0] = 7
    hook(8, [0.0] * 8, 0.01)
    total[0] = 8
    hook(4, [0.0] * 4, 0.01)
    hook(4, [0.0] * 4, 0.01)
    assert samples(metrics)[("mmfusion_fp32_rechecks_total", labels)] == 3


def test_triton_counters_use_bare_names_like_triton():
    metrics = ServiceMetrics()
    metrics.record_request("defect", 2, success=True)
    text = metrics.render().decode()
    assert 'nv_inference_request_success{model="defect",version="2"} 1.0' in text
    assert "nv_inference_request_success_total" not in text


def test_cache_streams_and_loaded_models_are_exported():
    metrics = ServiceMetrics()
    metrics.record_cache("defect", hit=True)
    metrics.record_cache("defect", hit=True)
    metrics.record_cache("defect", hit=False)
    metrics.set_stream_fps("cam-1", 24.5)
    metrics.set_stream_fps("cam-2", 3.0)
    metrics.record_dropped_frames("cam-1", 4)
    metrics.set_models_loaded(2)
    exported = samples(metrics)
    assert exported[("mmfusion_cache_hits_total", (("model", "defect"),))] == 2
    assert exported[("mmfusion_cache_misses_total", (("model", "defect"),))] == 1
    assert exported[("mmfusion_stream_fps", (("stream", "cam-1"),))] == 24.5
    assert exported[("mmfusion_stream_dropped_frames_total", (("stream", "cam-1"),))] == 4
    assert exported[("mmfusion_models_loaded", ())] == 2
    metrics.forget_stream("cam-2")
    metrics.forget_stream("never-seen")
    assert ("mmfusion_stream_fps", (("stream", "cam-2"),)) not in samples(metrics)


def test_instances_have_separate_registries():
    first, second = ServiceMetrics(), ServiceMetrics()
    first.record_request("defect", 1, success=True)
    assert ("nv_inference_request_success", (("model", "defect"), ("version", "1"))) not in samples(second)


def test_start_http_on_port_zero_serves_metrics():
    metrics = ServiceMetrics()
    metrics.set_models_loaded(3)
    port = metrics.start_http(0, addr="127.0.0.1")
    try:
        assert port > 0
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            body = response.read().decode()
        assert response.status == 200
        assert "mmfusion_models_loaded 3.0" in body
    finally:
        metrics.stop_http()
