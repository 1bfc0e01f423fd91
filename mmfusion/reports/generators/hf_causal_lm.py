"""The `hf_causal_lm` generator: any transformers causal LM from a local folder, its JSON checked against the schema."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import torch

from mmfusion.config import ConfigError
from mmfusion.reports.findings import findings_text
from mmfusion.reports.generators.base import GENERATORS, Emit, ReportGenerator, ReportInput
from mmfusion.reports.render import render
from mmfusion.reports.report import Report, schema_problems, slots_of, text_of
from mmfusion.templates.schema import PromptTemplate

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
REASONING = re.compile(r"<reasoning>.*?(</reasoning>|$)", re.DOTALL)
CODE_FENCE = re.compile(r"```(?:json)?")
TRAILING_COMMA = re.compile(r",\s*([}\]])")


class ReportSchemaError(ConfigError):
    """A language model whose answer still breaks the template's schema after one repair and one retry."""


def _balanced(text: str) -> str:
    """Close the brackets and the string a truncated JSON text left open."""
    closers, in_string, escaped = [], False, False
    for char in text:
        if in_string:
            escaped = char == "\\" and not escaped
            if char == '"' and not escaped:
                in_string = False
            continue
        if char == '"':
            in_string = True
        elif char in "{[":
            closers.append("}" if char == "{" else "]")
        elif char in "}]" and closers:
            closers.pop()
    return text + ('"' if in_string else "") + "".join(reversed(closers))


def extract_json(text: str) -> tuple[dict[str, Any] | None, str]:
    """The first JSON object in a model's answer, repaired once (code fences, trailing commas, unclosed brackets)."""
    cleaned = CODE_FENCE.sub("", REASONING.sub("", text))
    start = cleaned.find("{")
    if start < 0:
        return None, "no JSON object in the answer"
    decoder = json.JSONDecoder()
    try:
        value, _ = decoder.raw_decode(cleaned[start:])
    except json.JSONDecodeError as first_error:
        repaired = _balanced(TRAILING_COMMA.sub(r"\1", cleaned[start:].strip()))
        try:
            value, _ = decoder.raw_decode(TRAILING_COMMA.sub(r"\1", repaired))
        except json.JSONDecodeError:
            return None, f"not valid JSON: {first_error.msg} at character {first_error.pos}"
    if not isinstance(value, dict):
        return None, f"the JSON is a {type(value).__name__}, not an object"
    return value, ""


class _EmitStreamer:
    """A transformers streamer that hands decoded text to `emit` as tokens arrive."""

    def __new__(cls, tokenizer, emit: Emit):
        from transformers import TextStreamer

        class Streamer(TextStreamer):
            def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
                if text:
                    emit(text)

        return Streamer(tokenizer, skip_prompt=True, skip_special_tokens=True)


@GENERATORS.register("hf_causal_lm")
class HFCausalLMGenerator(ReportGenerator):
    """Prompt from the template, greedy decoding, answer parsed as JSON and checked; one retry with the problem."""

    def __init__(self, path: str | Path, max_new_tokens: int = 256) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        folder = Path(path)
        if not (folder / "config.json").is_file():
            raise ConfigError(f"hf_causal_lm: {str(folder)!r} is not a transformers model folder (no config.json)")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        self.model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
        self.max_new_tokens = max_new_tokens
        positions = getattr(self.model.config, "max_position_embeddings", None) or getattr(
            self.model.config, "n_positions", 2048
        )
        self.max_prompt_tokens = max(1, positions - max_new_tokens)

    def complete(self, prompt: str, emit: Emit) -> tuple[str, int, int]:
        """(answer, prompt tokens, answer tokens) for one prompt; the prompt's oldest tokens go when it is too long."""
        encoded = self.tokenizer(prompt, return_tensors="pt")
        input_ids = encoded["input_ids"][:, -self.max_prompt_tokens :]  # (1, T)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        with torch.inference_mode():
            output = self.model.generate(
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                max_new_tokens=self.max_new_tokens,
                do_sample=False,
                pad_token_id=pad,
                streamer=_EmitStreamer(self.tokenizer, emit),
            )  # (1, T + N)
        answer_ids = output[0, input_ids.shape[1] :]
        return self.tokenizer.decode(answer_ids, skip_special_tokens=True), input_ids.shape[1], len(answer_ids)

    def _check(self, template: PromptTemplate, answer: str) -> tuple[dict[str, Any] | None, str]:
        fields, problem = extract_json(answer)
        if fields is None:
            return None, problem
        problems = schema_problems(template, fields)
        return (fields, "") if not problems else (None, problems[0])

    def generate(self, template: PromptTemplate, request: ReportInput, emit: Emit) -> Report:
        prompt = render(template, {"findings": findings_text(request.findings), **request.values}).text
        answer, tokens_in, tokens_out = self.complete(prompt, emit)
        fields, problem = self._check(template, answer)
        if fields is None:
            emit("\n")
            retry = (
                f"{prompt}{answer}\n\n# Correction\nThat answer is not usable ({problem}). "
                "Answer again with only the JSON object.\n\n# Report\n"
            )
            answer, more_in, more_out = self.complete(retry, emit)
            tokens_in, tokens_out = tokens_in + more_in, tokens_out + more_out
            fields, second_problem = self._check(template, answer)
            if fields is None:
                raise ReportSchemaError(
                    f"hf_causal_lm: the answer does not fit the schema of template {template.key} after one repair "
                    f"and one retry: {second_problem} (answer began {answer[:60]!r})"
                )
        try:
            slots = slots_of(template, [item for item in fields.get("defects", []) if isinstance(item, dict)])
            slots.update(fields)
            slots["items"] = fields.get("findings", slots["items"])
            text = text_of(template, slots)
        except (ValueError, KeyError, IndexError):
            text = json.dumps(fields, ensure_ascii=False)
        return Report(text, fields, template.key, self.registry_name, (), tokens_in, tokens_out)
