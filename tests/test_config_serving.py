"""The `serving:` block of config.yaml: validated with errors that name the file and the key."""

from __future__ import annotations

import pytest
import yaml

from mmfusion.config import ConfigError, load_config
from tests.test_pipeline import tiny_model


def with_serving(folder, serving) -> str:
    """Give a tiny model folder a `serving:` block; the config file's path."""
    path = folder / "config.yaml"
    config = yaml.safe_load(path.read_text())
    config["serving"] = serving
    path.write_text(yaml.safe_dump(config))
    return str(path)


def test_a_full_serving_block_is_read(tmp_path):
    folder = tiny_model(tmp_path / "tiny")
    serving = {"max_batch_size": 8, "max_queue_delay_us": 0, "preferred_batch_sizes": [2, 8, 4], "instances": 2}
    serving["queue_policy"] = {"max_queue_size": 3, "default_timeout_us": 1000, "allow_timeout_override": False}
    with_serving(folder, serving)
    spec = load_config(folder).serving
    assert (spec.max_batch_size, spec.max_queue_delay_us, spec.instances) == (8, 0, 2)
    assert spec.preferred_batch_sizes == [8, 4, 2]
    assert spec.queue_policy.max_queue_size == 3 and spec.queue_policy.default_timeout_us == 1000
    assert spec.queue_policy.allow_timeout_override is False


def test_no_serving_block_leaves_every_field_to_flags_and_defaults(tmp_path):
    spec = load_config(tiny_model(tmp_path / "tiny")).serving
    assert spec.max_batch_size is None and spec.preferred_batch_sizes is None and spec.instances == 1
    assert spec.queue_policy.max_queue_size is None and spec.queue_policy.default_timeout_us is None


@pytest.mark.parametrize(
    ("serving", "message"),
    [
        (
            {"max_batch_size": 8, "preferred_batch_sizes": [4, 16]},
            "serving.preferred_batch_sizes: sizes [16] are out of range; expected sizes in 1..max_batch_size (8) "
            "(got [4, 16])",
        ),
        ({"preferred_batch_sizes": [0]}, "serving.preferred_batch_sizes: sizes [0] are out of range"),
        ({"max_queue_delay_us": -5}, "serving.max_queue_delay_us: Input should be greater than or equal to 0 (got -5)"),
        ({"instances": 0}, "serving.instances: Input should be greater than or equal to 1 (got 0)"),
        ({"max_batch": 4}, "serving.max_batch: unknown key; allowed: max_batch_size, max_queue_delay_us"),
        ({"queue_policy": {"timeout_us": 5}}, "serving.queue_policy.timeout_us: unknown key; allowed: max_queue_size"),
        ({"queue_policy": {"max_queue_size": 0}}, "serving.queue_policy.max_queue_size: Input should be greater"),
    ],
)
def test_a_bad_serving_block_names_file_and_key(tmp_path, serving, message):
    path = with_serving(tiny_model(tmp_path / "tiny"), serving)
    with pytest.raises(ConfigError) as raised:
        load_config(tmp_path / "tiny")
    assert str(raised.value).startswith(f"{path}: ") and message in str(raised.value)
