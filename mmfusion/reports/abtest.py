"""A/B tests of prompt variants: accuracy, latency, tokens, robustness to noisy input, paired-bootstrap winner."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from mmfusion.pipeline import Pipeline
from mmfusion.reports.compress import compress
from mmfusion.reports.dataset import load_report_manifest
from mmfusion.reports.findings import Finding, findings_from_outputs
from mmfusion.reports.generators.base import ReportInput
from mmfusion.reports.metrics import mention_accuracy, percentiles
from mmfusion.reports.noise import NOISE, inject
from mmfusion.reports.report import Report
from mmfusion.reports.writer import ReportWriter
from mmfusion.templates.schema import PromptTemplate, load_template
from mmfusion.types import InputError, Inputs, Modality

CLEAN = "clean"


@dataclass(frozen=True)
class EvalItem:
    """One evaluation row: the image, the template inputs (note, product), expected fields, reference text."""

    key: str
    image: np.ndarray | None
    values: dict[str, str]
    expected: dict[str, str]
    reference: str = ""


@dataclass(frozen=True)
class Variant:
    """A prompt variant: a template, optionally with context fields compressed to a character budget."""

    name: str
    template: PromptTemplate
    compress: dict[str, int] = field(default_factory=dict)


@dataclass
class VariantResult:
    """One variant's numbers; `scores` are per-item accuracies on the clean items (for the bootstrap)."""

    name: str
    template: str
    accuracy: float
    p50_ms: float
    p95_ms: float
    tokens_in: float
    tokens_out: float
    schema_validity: float
    robustness: dict[str, float]
    robust_accuracy: float
    scores: list[float]


@dataclass(frozen=True)
class Comparison:
    """The paired bootstrap of one variant against another on per-item accuracy."""

    better: str
    worse: str
    difference: float
    low: float
    high: float
    p_value: float
    significant: bool


def load_eval_items(path: str | Path) -> list[EvalItem]:
    """Eval manifest rows: CSV `image,text[,product][,type,location,severity][,report]` (report optional)."""
    items = []
    for row in load_report_manifest(path, need_image=False, need_report=False):
        values = {name: value for name, value in (("note", row.text), ("product", row.product)) if value}
        image = row.read_image() if row.image is not None else None
        items.append(EvalItem(f"line {row.line}", image, values, row.expected, row.report))
    return items


def paired_bootstrap(a: Sequence[float], b: Sequence[float], resamples: int = 2000, seed: int = 0) -> tuple:
    """(mean a - b, 95% low, 95% high, two-sided p) over items resampled with replacement."""
    a_scores, b_scores = np.asarray(a, float), np.asarray(b, float)
    differences = a_scores - b_scores  # (N,)
    rng = np.random.default_rng(seed)
    means = differences[rng.integers(0, len(differences), (resamples, len(differences)))].mean(axis=1)  # (R,)
    observed = float(differences.mean())
    low, high = np.percentile(means, [2.5, 97.5])
    if observed == 0.0 or np.all(differences == 0):
        return observed, float(low), float(high), 1.0
    tail = np.mean(means <= 0) if observed > 0 else np.mean(means >= 0)
    return observed, float(low), float(high), float(min(1.0, 2 * tail))


class ReportRunner:
    """Runs a model's report generator for any template; the pipeline's part is computed once per input."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        head_name = next((n for n, s in pipeline.config.heads.items() if s.name == "report"), None)
        if head_name is None:
            raise InputError(f"model {pipeline.name!r} has no report head; A/B tests need one")
        self.head_name = head_name
        self.writer = ReportWriter(pipeline, head_name)
        self._cache: dict[tuple[str, str], tuple[ReportInput, float]] = {}

    def _inputs(self, item: EvalItem, note: str | None) -> Inputs:
        reads_text = Modality.TEXT in self.pipeline.config.encoders
        return Inputs(image=item.image, text=note if reads_text and note else None)

    def context(self, item: EvalItem, noise: str, note: str | None) -> tuple[ReportInput, float]:
        """The findings (or image tokens) of one item as seen with this noise, and the pipeline's milliseconds."""
        key = (item.key, noise)
        if key not in self._cache:
            started = time.perf_counter()
            inputs = self._inputs(item, note)
            if self.writer.generator.needs_memory:
                outputs = self.pipeline.raw_outputs([inputs])
                memory = torch.from_numpy(np.ascontiguousarray(outputs[f"{self.head_name}.memory"][:1]))
                mask = torch.from_numpy(np.ascontiguousarray(outputs[f"{self.head_name}.memory_mask"][:1])).bool()
                context = ReportInput([], {}, memory, mask)
            else:
                prediction = self.pipeline.predict(inputs)
                outputs = {h: r for h, r in prediction.outputs.items() if h != self.head_name}
                size = (item.image.shape[1], item.image.shape[0]) if item.image is not None else None
                params = self.writer.params
                found: list[Finding] = findings_from_outputs(
                    outputs, params.sources, 0, size, params.ok_labels, params.severity_cuts
                )
                context = ReportInput(found)
            self._cache[key] = (context, (time.perf_counter() - started) * 1000)
        return self._cache[key]

    def run(self, variant: Variant, item: EvalItem, noise: str, seed: int) -> tuple[Report, float]:
        """One report for one item under one noise kind; latency = pipeline + generation milliseconds."""
        values = {k: v for k, v in item.values.items() if k in variant.template.inputs}
        if noise != CLEAN:
            values = {k: inject(v, noise, seed) for k, v in values.items()}
        context, pipeline_ms = self.context(item, noise, values.get("note", item.values.get("note")))
        for name, budget in variant.compress.items():
            if name in values:
                values[name] = compress(values[name], budget)
        started = time.perf_counter()
        report = self.writer.generator.generate(
            variant.template, ReportInput(context.findings, values, context.memory, context.memory_mask), lambda _: None
        )
        return report, pipeline_ms + (time.perf_counter() - started) * 1000


def _score(report: Report, item: EvalItem) -> float:
    return mention_accuracy(report.text, item.expected)


def evaluate_variant(
    runner: ReportRunner, variant: Variant, items: list[EvalItem], noises: Sequence[str], seed: int, progress: bool
) -> VariantResult:
    """Every item clean and under every noise kind."""
    scores, latencies, tokens_in, tokens_out, valid = [], [], [], [], []
    robustness: dict[str, float] = {}
    for noise in tqdm([CLEAN, *noises], desc=variant.name, unit="set", disable=not progress):
        noisy_scores = []
        for index, item in enumerate(items):
            try:
                report, milliseconds = runner.run(variant, item, noise, seed + index)
                score = _score(report, item)
            except InputError:
                report, milliseconds, score = None, float("nan"), 0.0
            if noise == CLEAN:
                scores.append(score)
                valid.append(report is not None and report.valid)
                if report is not None:
                    latencies.append(milliseconds)
                    tokens_in.append(report.tokens_in)
                    tokens_out.append(report.tokens_out)
            else:
                noisy_scores.append(score)
        if noise != CLEAN:
            robustness[noise] = float(np.mean(noisy_scores))
    timing = percentiles(latencies)
    return VariantResult(
        name=variant.name,
        template=variant.template.key,
        accuracy=float(np.mean(scores)),
        p50_ms=timing["p50_ms"],
        p95_ms=timing["p95_ms"],
        tokens_in=float(np.mean(tokens_in)) if tokens_in else 0.0,
        tokens_out=float(np.mean(tokens_out)) if tokens_out else 0.0,
        schema_validity=float(np.mean(valid)),
        robustness=robustness,
        robust_accuracy=float(np.mean(list(robustness.values()))) if robustness else float("nan"),
        scores=scores,
    )


@dataclass
class ABResult:
    """Every variant's numbers, the pairwise comparisons of the best against the rest, and the winner (or none)."""

    variants: list[VariantResult]
    comparisons: list[Comparison]
    winner: str | None
    items: int
    noises: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def decide(results: list[VariantResult], resamples: int = 2000, alpha: float = 0.05, seed: int = 0):
    """The best variant by accuracy wins only when the paired bootstrap finds it better than every other one."""
    ranked = sorted(results, key=lambda r: -r.accuracy)
    best = ranked[0]
    comparisons = []
    for other in ranked[1:]:
        difference, low, high, p_value = paired_bootstrap(best.scores, other.scores, resamples, seed)
        significant = p_value < alpha and low > 0
        comparisons.append(Comparison(best.name, other.name, difference, low, high, p_value, significant))
    winner = best.name if comparisons and all(c.significant for c in comparisons) else None
    return comparisons, winner


def run_ab(
    pipeline: Pipeline,
    variants: list[Variant],
    items: list[EvalItem],
    noises: Sequence[str] = tuple(NOISE),
    seed: int = 0,
    resamples: int = 2000,
    progress: bool = False,
) -> ABResult:
    """Run every variant on the same items (clean and noisy) and decide whether one wins."""
    if len(variants) < 2:
        raise InputError(f"--variants: {len(variants)} given; an A/B test needs at least two")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        variants = [Variant(f"{v.name}#{i + 1}", v.template, v.compress) for i, v in enumerate(variants)]
    runner = ReportRunner(pipeline)
    results = [evaluate_variant(runner, v, items, noises, seed, progress) for v in variants]
    comparisons, winner = decide(results, resamples, seed=seed)
    return ABResult(results, comparisons, winner, len(items), list(noises))


def variants_from_files(paths: Sequence[str], compress_fields: dict[str, int] | None = None) -> list[Variant]:
    """One variant per template file (or library name); with compression, each also gets a compressed twin."""
    variants = []
    for path in paths:
        template = load_template(path)
        name = Path(path).stem if str(path).endswith((".yaml", ".yml")) else str(path)
        variants.append(Variant(name, template))
        if compress_fields:
            budget = ",".join(f"{k}={v}" for k, v in compress_fields.items())
            variants.append(Variant(f"{name}+compress({budget})", template, dict(compress_fields)))
    return variants


def table(result: ABResult) -> str:
    """The result as a plain-text table plus the verdict."""
    columns = ("acc", 6), ("robust", 7), ("p50 ms", 8), ("p95 ms", 8), ("tok in", 7), ("tok out", 7), ("valid", 6)
    header = f"{'variant':<34} " + " ".join(f"{name:>{width}}" for name, width in columns)
    lines = [header, "-" * len(header)]
    for r in result.variants:
        lines.append(
            f"{r.name[:34]:<34} {r.accuracy:>6.3f} {r.robust_accuracy:>7.3f} {r.p50_ms:>8.1f} {r.p95_ms:>8.1f} "
            f"{r.tokens_in:>7.1f} {r.tokens_out:>7.1f} {r.schema_validity:>6.2f}"
        )
    lines.append("")
    for c in result.comparisons:
        verdict = "significant" if c.significant else "not significant"
        lines.append(
            f"{c.better} - {c.worse}: {c.difference:+.3f} (95% CI {c.low:+.3f}..{c.high:+.3f}, p={c.p_value:.3f}, "
            f"{verdict})"
        )
    lines.append(f"winner: {result.winner}" if result.winner else "winner: none (tie: no significant difference)")
    return "\n".join(lines)


def write_outputs(result: ABResult, folder: str | Path) -> dict[str, Path]:
    """ab.json, ab.txt and ab.png (accuracy clean/noisy and p50 latency per variant) in `folder`."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"json": folder / "ab.json", "table": folder / "ab.txt", "chart": folder / "ab.png"}
    paths["json"].write_text(json.dumps(result.to_json(), indent=2))
    paths["table"].write_text(table(result) + "\n")
    names = [r.name for r in result.variants]
    positions = np.arange(len(names))
    figure, (accuracy_axis, latency_axis) = plt.subplots(1, 2, figsize=(4 + 2 * len(names), 4))
    accuracy_axis.bar(positions - 0.2, [r.accuracy for r in result.variants], 0.4, label="clean")
    accuracy_axis.bar(positions + 0.2, [r.robust_accuracy for r in result.variants], 0.4, label="noisy (mean)")
    accuracy_axis.set_ylim(0, 1.05)
    accuracy_axis.set_title("field accuracy")
    accuracy_axis.legend()
    latency_axis.bar(positions, [r.p50_ms for r in result.variants], 0.5, color="tab:gray")
    latency_axis.set_title("p50 latency (ms)")
    for axis in (accuracy_axis, latency_axis):
        axis.set_xticks(positions, names, rotation=20, ha="right", fontsize=8)
    figure.suptitle(f"winner: {result.winner or 'none (tie)'}")
    figure.tight_layout()
    figure.savefig(paths["chart"], dpi=100)
    plt.close(figure)
    return paths
