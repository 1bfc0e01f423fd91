"""Full, LoRA and prefix fine-tuning: what changes, what stays byte-identical, merging, versions, bad tables."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmfusion import adapters
from mmfusion.data.table import TableError
from mmfusion.pipeline import Pipeline
from mmfusion.training.engine import TaskModel, Trainer, load_examples
from mmfusion.training.finetune import adapt, finetune, imprint_head
from mmfusion.training.options import TrainOptions
from mmfusion.types import Inputs
from tests.training.helpers import stripes, write_config, write_image, write_rows

LABELS = ["fault", "ok"]


def _prepare(task, method: str, **overrides):
    """Pipeline, imprinted head, the state before adapting, the adapted graph and a trainer."""
    options = TrainOptions(
        train=task["train"],
        val=task["val"],
        out=task["root"] / "run",
        method=method,
        batch_size=8,
        epochs=6,
        rank=8,
        prefix_tokens=4,
        lr=1e-3 if method != "prefix" else 1e-2,
        progress=False,
        **overrides,
    )
    torch.manual_seed(0)
    pipeline = Pipeline(task["model"], backend="torch")
    train, val = (load_examples(p, pipeline, LABELS) for p in (options.train, options.val))
    imprint_head(TaskModel(pipeline.graph, "kind"), train, LABELS, 8)
    before = {k: v.clone() for k, v in pipeline.graph.state_dict().items()}
    adaptation = adapt(pipeline.graph, "kind", options)
    trainer = Trainer(TaskModel(pipeline.graph, "kind"), train, val, options.loop())
    return pipeline, before, adaptation, trainer, val


def test_lora_trains_only_adapters_and_merges_exactly(text_task):
    pipeline, before, adaptation, trainer, val = _prepare(text_task, "lora")
    assert set(adaptation.targets.values()) == {"bert-attention"} and len(adaptation.targets) == 8
    initial = trainer.evaluate()["val_loss"]
    history = trainer.fit()
    assert min(e["val_loss"] for e in history.epochs) < initial - 0.05
    after = pipeline.graph.state_dict()
    for name, value in after.items():
        original = name.replace(".base_layer", "").replace("base_model.model.", "")
        if "lora_" in name:
            continue
        if original.startswith("encoders."):
            assert torch.equal(value, before[original]), name  # base weights byte-identical
    assert any(not torch.equal(after[k], before[k]) for k in before if k.startswith("heads.kind"))
    assert any("lora_B" in k and after[k].abs().sum() > 0 for k in after)
    inputs = trainer.task.tensors(val, torch.device("cpu"))
    with torch.no_grad():
        unmerged = trainer.task(inputs)[0]
        merged_graph = adapters.merge_lora(adaptation.peft_model)
        assert not any("lora_" in k for k in merged_graph.state_dict())
        merged = TaskModel(merged_graph, "kind").eval()(inputs)[0]
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-5)


def test_prefix_tuning_trains_only_the_prefix(text_task):
    pipeline, before, adaptation, trainer, _ = _prepare(text_task, "prefix")
    trainable = {n for n, p in pipeline.graph.named_parameters() if p.requires_grad}
    assert trainable == {
        "encoders.text.model.prompt_encoder.default.embedding.weight",
        "heads.kind.weight",
        "heads.kind.bias",
    }
    initial = trainer.evaluate()["val_loss"]
    history = trainer.fit()
    assert min(e["val_loss"] for e in history.epochs) < initial - 0.05
    after = pipeline.graph.state_dict()
    for name, value in after.items():
        original = name.replace("model.base_model.", "model.")
        if original in before and original.startswith("encoders."):
            assert torch.equal(value, before[original]), name


def test_prefix_version_loads_through_pipeline(text_task):
    options = TrainOptions(
        train=text_task["train"],
        val=text_task["val"],
        out=text_task["root"] / "run",
        method="prefix",
        prefix_tokens=4,
        epochs=2,
        batch_size=8,
        progress=False,
    )
    result = finetune(str(text_task["model"]), options)
    assert result.version == 2 and (result.folder / "adapter.json").is_file()
    loaded = Pipeline(text_task["model"], backend="torch", version=2)
    texts = ["the spindle is vibrating hard line", "all checks passed running smooth two"]
    expected = TaskModel(result.graph, "kind").eval()
    with torch.no_grad():
        probabilities = expected(expected.tensors([_example(t) for t in texts], torch.device("cpu")))[0].exp()
    got = loaded.raw_outputs([Inputs(text=t) for t in texts])["kind.probabilities"]
    np.testing.assert_allclose(got, probabilities.numpy(), atol=1e-5)


def _example(text: str):
    from mmfusion.training.engine import Example

    return Example(0, Inputs(text=text), 0)


def test_bad_training_rows_are_listed_before_training(text_task, tmp_path):
    write_image(tmp_path / "x.png", stripes(0, True))
    rows = [
        {"text": "the spindle is vibrating", "label": "fault"},
        {"text": "bearing worn", "label": "broken"},
        {"text": "", "image": "x.png", "label": "ok"},
        {"text": "all good", "label": "ok"},
    ]
    with pytest.raises(TableError) as error:
        finetune(
            str(text_task["model"]),
            TrainOptions(
                train=write_rows(tmp_path / "bad.csv", rows), val=text_task["val"], out=tmp_path / "run", progress=False
            ),
        )
    message = str(error.value)
    assert "2 bad row(s): line 3: label 'broken' is not one of the head's labels ['fault', 'ok']" in message
    assert "line 4: notes has no encoder for image; it reads text" in message
    assert not (text_task["model"] / "versions").exists()


@pytest.mark.parametrize(
    ("encoder", "family", "count"),
    [
        ({"name": "image.open_clip", "params": {"model_name": "ViT-S-32-alt"}}, "vit-attention", 12),
        (
            {
                "name": "speech.whisper",
                "params": {"n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 2, "n_audio_ctx": 50},
            },
            "whisper-attention",
            8,
        ),
        (
            {"name": "image.efficientnet_lite0", "params": {"weights": "random", "image_size": 64}},
            "efficientnet-projections",
            32,
        ),
    ],
)
def test_lora_targets_each_family_and_merges_exactly(tmp_path, encoder, family, count):
    from mmfusion.registry import ENCODERS

    modality = ENCODERS.get(encoder["name"]).modality.value
    model = write_config(tmp_path / "m", {modality: encoder}, LABELS)
    graph = Pipeline(model, backend="torch").graph
    peft_model, targets = adapters.apply_lora(graph, rank=4, alpha=8, dropout=0.0)
    assert set(targets.values()) == {family} and len(targets) == count
    trainable, total = adapters.count_parameters(graph)
    assert 0 < trainable < 0.1 * total
    with torch.no_grad():
        for name, parameter in graph.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.02)  # LoRA starts at zero; make the update visible
    graph.eval()
    if modality == "image":
        inputs = {
            "image.pixels": torch.from_numpy(graph.encoders["image"].preprocess([stripes(1, True, 64)])["pixels"])
        }
    else:
        arrays = graph.encoders["audio"].preprocess([np.random.default_rng(0).normal(0, 0.1, 16000).astype(np.float32)])
        inputs = {f"audio.{k}": torch.from_numpy(v) for k, v in arrays.items()}
    with torch.no_grad():
        unmerged = graph(inputs)["kind.probabilities"]
        merged = adapters.merge_lora(peft_model)(inputs)["kind.probabilities"]
    torch.testing.assert_close(merged, unmerged, atol=1e-5, rtol=1e-4)
