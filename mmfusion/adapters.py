"""Parameter-efficient adapters through peft: LoRA per encoder family, prefix tuning for text models."""

from __future__ import annotations

import re
import warnings

from torch import nn

from mmfusion.graph import PipelineGraph

LORA_RANKS = (4, 8, 16, 32, 64)
BERT_ATTENTION = re.compile(r"attention\.(self\.(query|key|value)|output\.dense)$")
WHISPER_ATTENTION = re.compile(r"(^|\.)attn\.(query|key|value|out)$")
EFFICIENTNET_PROJECTIONS = re.compile(r"(_expand_conv|_project_conv|_conv_head)$")


def lora_family(name: str, module: nn.Module) -> str | None:
    """The encoder family whose LoRA target `module` is, or None when it is not a target.

    ViT towers (open_clip, image and text) get LoRA on every attention block (in_proj and out_proj
    of nn.MultiheadAttention); whisper on query/key/value/out of each attention; BERT-style
    transformers (MiniLM, BERT) on query/key/value and the attention output projection; EfficientNet,
    which has no attention, on its 1x1 expansion/projection convolutions.
    """
    if isinstance(module, nn.MultiheadAttention):
        return "vit-attention"
    if isinstance(module, nn.Linear) and WHISPER_ATTENTION.search(name):
        return "whisper-attention"
    if isinstance(module, nn.Linear) and BERT_ATTENTION.search(name):
        return "bert-attention"
    if isinstance(module, nn.Conv2d) and module.kernel_size == (1, 1) and EFFICIENTNET_PROJECTIONS.search(name):
        return "efficientnet-projections"
    return None


def lora_targets(graph: PipelineGraph, pattern: str | None = None) -> dict[str, str]:
    """Module name -> family for every LoRA target in the encoders (or every module matching `pattern`)."""
    targets = {}
    for name, module in graph.named_modules():
        if not name.startswith("encoders."):
            continue
        if pattern is not None:
            if re.search(pattern, name) and isinstance(module, (nn.Linear, nn.Conv2d, nn.MultiheadAttention)):
                targets[name] = "pattern"
        else:
            family = lora_family(name, module)
            if family is not None and not any(name.startswith(t + ".") for t in targets):
                targets[name] = family
    if not targets:
        where = f"matching {pattern!r}" if pattern else "of a known family (ViT, whisper, BERT-style, EfficientNet)"
        raise ValueError(f"--method lora: the encoders have no layers {where}; nothing to adapt")
    return targets


def apply_lora(graph: PipelineGraph, rank: int, alpha: float, dropout: float, pattern: str | None = None):
    """Inject LoRA layers into the graph's encoders in place; returns the peft model (for merging) and targets."""
    from peft import LoraConfig, get_peft_model

    if rank < 1:
        raise ValueError(f"--rank {rank}: expected a positive rank (16 or 32 are usual)")
    targets = lora_targets(graph, pattern)
    for name in targets:
        _plain_pointwise_conv(graph, name)
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=sorted(targets), bias="none")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # peft warns that nn.MultiheadAttention support is experimental
        peft_model = get_peft_model(graph, config)
    return peft_model, targets


def _plain_pointwise_conv(graph: nn.Module, name: str) -> None:
    """Swap a 1x1, stride-1 Conv2d subclass (EfficientNet's static-padding conv) for a plain nn.Conv2d.

    peft rebuilds LoRA conv layers with the base layer's own class, which for
    efficientnet_lite_pytorch's Conv2dStaticSamePadding needs an image size; with a 1x1 kernel
    and stride 1 the padding is zero, so a plain Conv2d sharing the same parameters is identical.
    """
    module = graph.get_submodule(name)
    if type(module) is nn.Conv2d or not isinstance(module, nn.Conv2d):
        return
    if module.kernel_size != (1, 1) or tuple(module.stride) != (1, 1):
        return
    plain = nn.Conv2d(module.in_channels, module.out_channels, 1, bias=module.bias is not None, groups=module.groups)
    plain.weight = module.weight
    plain.bias = module.bias
    parent, _, child = name.rpartition(".")
    setattr(graph.get_submodule(parent), child, plain)


def merge_lora(peft_model) -> PipelineGraph:
    """Fold the LoRA updates into the base weights and remove the adapter layers."""
    return peft_model.merge_and_unload()


def transformers_encoders(graph: PipelineGraph) -> dict[str, nn.Module]:
    """Encoders wrapping a transformers model in `.model` (text.hf): the ones prefix tuning applies to."""
    from transformers import PreTrainedModel

    found = {}
    for modality, encoder in graph.encoders.items():
        inner = getattr(encoder, "model", None)
        if isinstance(inner, PreTrainedModel) or type(inner).__name__.startswith("PeftModel"):
            found[modality] = encoder
    return found


def apply_prefix(graph: PipelineGraph, virtual_tokens: int) -> list[str]:
    """Wrap every transformers text encoder's model with peft prefix tuning; returns the modalities adapted."""
    from peft import PrefixTuningConfig, TaskType, get_peft_model

    encoders = transformers_encoders(graph)
    if not encoders:
        kinds = ", ".join(f"{m}: {type(e).__name__}" for m, e in graph.encoders.items())
        raise ValueError(f"--method prefix needs a transformers text encoder (text.hf); this model has {kinds}")
    if virtual_tokens < 1:
        raise ValueError(f"--prefix-tokens {virtual_tokens}: expected at least 1")
    for encoder in encoders.values():
        if hasattr(encoder.model, "prompt_encoder"):  # already prefix-tuned (a version trained before)
            encoder.model.prompt_encoder.requires_grad_(True)
            continue
        config = PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=virtual_tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            encoder.model = get_peft_model(encoder.model, config)
    return sorted(encoders)


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in module.parameters() if p.requires_grad)
    return trainable, sum(p.numel() for p in module.parameters())
