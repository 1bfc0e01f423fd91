"""The call analysis behind AnalyzeAudio: scheduler work item and the InspectionResult it answers with.

AnalyzeAudio stays client-streaming: the chunks of a call are gathered, then the whole call runs
as one item on the model's scheduler thread, and the single result carries every segment (speaker,
times, text, words, labels) in `heads["call"].extra`. Partial results while a call goes on come from
StreamCall (serving/call_stream.py), whose last message is this same result; see docs/audio.md.
"""

from __future__ import annotations

from google.protobuf import struct_pb2

from mmfusion.calls.call import CallAnalysis, call_analyzer
from mmfusion.calls.config import load_call_config
from mmfusion.calls.decode import CallAudio
from mmfusion.media import MAX_AUDIO_SECONDS
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.batching import Call

CALL_HEAD = "call"
COMPLIANCE_HEAD = "compliance"


def max_call_seconds(pipeline) -> float:
    """The longest call the model's `call.yaml` accepts (`max_seconds`), checked before and while decoding."""
    config = load_call_config(pipeline.model_dir)
    return config.max_seconds if config is not None else MAX_AUDIO_SECONDS


def call_work(audio: CallAudio) -> Call:
    """A scheduler item that analyses one call on the model's worker thread."""
    return Call(lambda pipeline: call_analyzer(pipeline).analyze(audio))


def _struct(values: dict) -> struct_pb2.Struct:
    message = struct_pb2.Struct()
    message.update(values)
    return message


def call_to_proto(analysis: CallAnalysis, model: str, version: str) -> pb.InspectionResult:
    """The analysis as an InspectionResult: label heads, compliance flags, and the whole call in `call`."""
    result = pb.InspectionResult(model=model, model_version=version, modalities=["audio"])
    for task, labels in analysis.labels.items():
        result.heads[task].CopyFrom(
            pb.HeadResult(kind="call_labels", label=labels.label, score=labels.score, scores=labels.scores)
        )
    compliance = analysis.compliance.to_dict()
    result.heads[COMPLIANCE_HEAD].CopyFrom(
        pb.HeadResult(kind="call_compliance", flags=analysis.flags, extra=_struct(compliance))
    )
    result.heads[CALL_HEAD].CopyFrom(pb.HeadResult(kind="call_analysis", extra=_struct(analysis.to_dict())))
    first_task = next(iter(analysis.labels), None)
    if first_task is not None:
        result.verdict = analysis.labels[first_task].label
        result.verdict_score = analysis.labels[first_task].score
        result.scores.update(analysis.labels[first_task].scores)
    result.flags.extend(analysis.flags)
    transcript = analysis.transcript()
    result.transcript.CopyFrom(
        pb.Transcript(
            text=transcript.text,
            language=transcript.language,
            words=[pb.Word(word=w.word, start=w.start, end=w.end, probability=w.probability) for w in transcript.words],
        )
    )
    return result
