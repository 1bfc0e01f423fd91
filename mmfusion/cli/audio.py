"""`mmfusion` subcommands of call analysis: eval-asr; and the call view of `mmfusion predict`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

DEFAULT_CALL_MODEL = "call-centre"


def predict_call(pipeline, audio: Path, as_json: bool) -> bool:
    """Print the call analysis of `audio` when the pipeline is a call model; False (nothing printed) otherwise."""
    from mmfusion.calls.call import call_analyzer
    from mmfusion.calls.render import render_call

    analyzer = call_analyzer(pipeline)
    if analyzer is None:
        return False
    analysis = analyzer.analyze_file(audio)
    print(json.dumps(analysis.to_dict(), ensure_ascii=False) if as_json else render_call(analysis.to_dict()))
    return True


def _cmd_eval_asr(args: argparse.Namespace) -> int:
    from mmfusion.calls.asr_eval import evaluate, read_asr_manifest, summary
    from mmfusion.calls.call import call_analyzer
    from mmfusion.config import ConfigError
    from mmfusion.pipeline import Pipeline

    items = read_asr_manifest(args.manifest)
    pipeline = Pipeline(args.model)
    analyzer = call_analyzer(pipeline)
    if analyzer is None:
        raise ConfigError(f"model {args.model!r} has no call.yaml; eval-asr needs a call-analysis model")

    def transcribe(path: Path) -> tuple[str, float]:
        analysis = analyzer.analyze_file(path)
        return analysis.transcript().text, analysis.duration

    scores = evaluate(items, transcribe, progress=not args.json)
    totals = summary(scores)
    if args.json:
        print(json.dumps({"files": [vars(s) for s in scores], "summary": totals}, ensure_ascii=False))
        return 0
    for item in scores:
        print(f"{item.metric} {item.error_rate:6.1%}  rtf {item.seconds / item.audio_seconds:5.2f}  {item.audio}")
        if item.error_rate:
            print(f"    ref: {item.reference}\n    hyp: {item.hypothesis}")
    rates = ", ".join(f"{metric.upper()} {totals[metric]:.1%}" for metric in ("wer", "cer") if metric in totals)
    print(
        f"{totals['files']} files, {totals['audio_seconds']:.1f} s of audio: {rates}, "
        f"real-time factor {totals['real_time_factor']:.3f}"
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    """Register eval-asr on the `mmfusion` parser."""
    evaluate = sub.add_parser("eval-asr", help="word error rate (CER for Chinese) and real-time factor of a model")
    evaluate.add_argument("manifest", help="CSV with columns audio,text (audio paths relative to the CSV)")
    evaluate.add_argument("--model", default=DEFAULT_CALL_MODEL, help="a call-analysis model (with call.yaml)")
    evaluate.add_argument("--json", action="store_true", help="one line of JSON")
    evaluate.set_defaults(run=_cmd_eval_asr)
