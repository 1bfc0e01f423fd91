"""Reports: findings -> the template's text rendering and JSON fields, schema checks, and text parsed back."""

from __future__ import annotations

import json
import re
import string
from dataclasses import dataclass, field
from typing import Any

import jsonschema

from mmfusion.reports.findings import SEVERITIES, Finding
from mmfusion.templates.schema import PromptTemplate

EMPTY_ITEM = {"type": "", "location": "", "severity": "", "suggested_change": ""}


@dataclass(frozen=True)
class Report:
    """One generated report: its text, its structured fields (the template's JSON) and what it cost."""

    text: str
    fields: dict[str, Any]
    template: str
    generator: str
    problems: tuple[str, ...] = ()
    tokens_in: int = 0
    tokens_out: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def valid(self) -> bool:
        """True when the fields match the template's JSON schema."""
        return not self.problems

    def flat_fields(self) -> dict[str, str]:
        """The fields as strings (lists and objects as compact JSON), with text, json and bookkeeping keys."""
        flat = {key: value if isinstance(value, str) else json.dumps(value) for key, value in self.fields.items()}
        flat.update(
            json=json.dumps(self.fields, ensure_ascii=False),
            text=self.text,
            template=self.template,
            generator=self.generator,
            schema_valid=str(self.valid).lower(),
            tokens_in=str(self.tokens_in),
            tokens_out=str(self.tokens_out),
        )
        if self.problems:
            flat["problems"] = " | ".join(self.problems)
        return flat


def suggested_change(template: PromptTemplate, defect_type: str) -> str:
    """The template's recommendation for a defect type (its `default` for unknown types)."""
    recommendations = template.output.recommendations
    return recommendations.get(defect_type, recommendations["default"])


def item_of(template: PromptTemplate, finding: Finding) -> dict[str, Any]:
    """One finding as a report item (the keys the item format and the schema use)."""
    return {
        "type": finding.type,
        "location": finding.location,
        "severity": finding.severity,
        "score": finding.score,
        "suggested_change": suggested_change(template, finding.type),
    }


def _rank(item: dict[str, Any]) -> tuple[int, float]:
    severity = SEVERITIES.index(item["severity"]) if item.get("severity") in SEVERITIES else -1
    return severity, float(item.get("score", 0.0))


def _format(pattern: str, values: dict[str, Any], where: str) -> str:
    try:
        return pattern.format(**values)
    except KeyError as error:
        raise ValueError(f"{where}: placeholder {error.args[0]!r} has no value; have {sorted(values)}") from None


def slots_of(template: PromptTemplate, items: list[dict[str, Any]]) -> dict[str, Any]:
    """Every value a template's text and schema may use, from report items."""
    output = template.output
    lines = [_format(output.item, item, f"{template.key} output.item") for item in items]
    items_text = output.join.join(lines) if lines else output.none
    worst = max(items, key=_rank) if items else None
    impression = (
        _format(output.impression, worst, f"{template.key} output.impression") if worst else output.impression_none
    )
    recommendation = worst["suggested_change"] if worst else output.recommendations["none"]
    summary = (
        f"{len(items)} defect{'s' if len(items) != 1 else ''}: "
        + ", ".join(f"{i['severity']} {i['type']} at the {i['location']}" for i in items)
        if items
        else "no defects"
    )
    return {
        "defects": items,
        "verdict": "fail" if items else "pass",
        "summary": summary,
        "items": items_text,
        "findings": items_text,
        "impression": impression,
        "recommendation": recommendation,
    }


def fields_of(template: PromptTemplate, slots: dict[str, Any]) -> dict[str, Any]:
    """The JSON object: the slots the template's schema names."""
    properties = template.output.output_schema.get("properties", {})
    return {key: slots[key] for key in properties if key in slots}


def text_of(template: PromptTemplate, slots: dict[str, Any]) -> str:
    """The template's text rendering of the slots."""
    return _format(template.output.text, slots, f"{template.key} output.text")


def schema_problems(template: PromptTemplate, fields: dict[str, Any]) -> tuple[str, ...]:
    """Every way the fields break the template's JSON schema, one line each (empty when valid)."""
    validator = jsonschema.Draft202012Validator(template.output.output_schema)
    return tuple(
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message}"
        for error in sorted(validator.iter_errors(fields), key=lambda e: list(e.absolute_path))
    )


def compose(template: PromptTemplate, findings: list[Finding], generator: str = "template") -> Report:
    """The deterministic report of a list of findings (the `template` generator's output)."""
    slots = slots_of(template, [item_of(template, finding) for finding in findings])
    fields = fields_of(template, slots)
    return Report(text_of(template, slots), fields, template.key, generator, schema_problems(template, fields))


def _pattern(fmt: str, group: str) -> re.Pattern[str]:
    """A regex that matches what `fmt` renders; a repeated placeholder must repeat its first value."""
    parts, seen = [], set()
    for literal, name, _, _ in string.Formatter().parse(fmt):
        parts.append(re.escape(literal))
        if not name:
            continue
        parts.append(f"(?P={name})" if name in seen else f"(?P<{name}>{group})")
        seen.add(name)
    return re.compile("".join(parts), re.DOTALL)


def parse_items(template: PromptTemplate, text: str) -> tuple[list[dict[str, Any]], list[str]]:
    """Report items read back from an items text; unreadable pieces are returned as problems."""
    output = template.output
    if text.strip() == output.none.strip():
        return [], []
    item_pattern = _pattern(output.item, r".+?")
    items, problems = [], []
    for index, piece in enumerate(p.strip() for p in text.split(output.join.strip() or output.join)):
        if not piece:
            continue
        match = item_pattern.fullmatch(piece)
        if match is None:
            problems.append(f"items[{index}]: {piece[:60]!r} does not match {output.item!r}")
            continue
        item: dict[str, Any] = dict(match.groupdict())
        if "score" in item:
            try:
                item["score"] = float(item["score"])
            except ValueError:
                problems.append(f"items[{index}].score: {item['score']!r} is not a number")
                continue
        items.append(item)
    return items, problems


def parse_report(template: PromptTemplate, text: str, generator: str) -> Report:
    """A report from text in the template's rendering (a decoder's output): fields parsed, then schema-checked."""
    match = _pattern(template.output.text, r".*?").fullmatch(text.strip())
    if match is None:
        problem = f"<text>: does not match the rendering {template.output.text!r}"
        return Report(text, {}, template.key, generator, (problem,))
    parsed = match.groupdict()
    items, problems = parse_items(template, parsed.get("items", ""))
    slots = slots_of(template, [{**EMPTY_ITEM, **item} for item in items])
    slots["defects"] = items
    slots.update({key: value for key, value in parsed.items() if key != "items"})
    fields = fields_of(template, slots)
    return Report(text, fields, template.key, generator, tuple(problems) + schema_problems(template, fields))
