"""Call analysis speed: real-time factor, streaming partial-result latency, and CTranslate2 int8 vs openai-whisper.

    .venv/bin/python benchmarks/audio.py [--threads 2] [--tokens 32]

1. Real-time factor of the call-centre analyzer (embedded faster-whisper base int8, VAD, labels)
   on the LibriVox clips (or the repo's sample clip): wall seconds per audio second, and CPU seconds.
2. Streaming: a call of clips 1.5 s apart fed in 100 ms chunks on a simulated real-time clock (a
   chunk cannot be fed before its audio was recorded; processing delays the next chunk): latency =
   when a segment's partial result is out minus when its speech ended. Same as pacing with sleep.
3. One 30 s window, encoder + a fixed number of greedily decoded tokens (end-of-text suppressed):
   CTranslate2 int8 (embedded weights) against openai-whisper in PyTorch with the same model
   dimensions (random weights; speed only), the same audio and the same token count.
Results: a table on stdout and benchmarks/results/audio.json. Other processes on the machine add noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO.parent / "shared" / "datasets" / "librivox-speech"
RESULTS = REPO / "benchmarks" / "results" / "audio.json"
SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.1


def clips() -> list[np.ndarray]:
    from mmfusion.media import decode_audio

    paths = sorted(CLIPS.glob("*.wav")) or sorted((REPO / "samples").glob("*.wav"))
    return [decode_audio(path) for path in paths]


def real_time_factor(analyzer, waveforms: list[np.ndarray]) -> dict:
    from mmfusion.calls.decode import CallAudio

    analyzer.analyze(CallAudio(waveforms[0][None], SAMPLE_RATE))  # warm-up
    wall = cpu = 0.0
    for waveform in waveforms:
        started, started_cpu = time.perf_counter(), time.process_time()
        analyzer.analyze(CallAudio(waveform[None], SAMPLE_RATE))
        wall += time.perf_counter() - started
        cpu += time.process_time() - started_cpu
    audio = sum(w.size for w in waveforms) / SAMPLE_RATE
    return {
        "audio_seconds": round(audio, 2),
        "rtf": round(wall / audio, 4),
        "cpu_seconds_per_audio_second": round(cpu / audio, 4),
    }


def streaming_latency(analyzer, waveforms: list[np.ndarray]) -> dict:
    pause = np.zeros(int(1.5 * SAMPLE_RATE), np.float32)
    call = np.concatenate([piece for w in waveforms for piece in (w, pause)])
    stream = analyzer.stream(1)
    chunk = int(CHUNK_SECONDS * SAMPLE_RATE)
    clock, latencies = 0.0, []
    for start in range(0, call.size, chunk):
        clock = max(clock, (start + chunk) / SAMPLE_RATE)  # the chunk has been recorded
        began = time.perf_counter()
        segments = stream.feed(call[start : start + chunk])
        clock += time.perf_counter() - began
        latencies += [clock - segment.end for segment in segments]
    stream.finish()
    return {
        "segments": len(latencies),
        "median_latency_s": round(statistics.median(latencies), 3) if latencies else None,
        "max_latency_s": round(max(latencies), 3) if latencies else None,
    }


def ctranslate2_window(whisper_model, audio: np.ndarray, tokens: int) -> tuple[float, int, float]:
    """(seconds for encoder + decoding, tokens decoded, seconds of the encoder alone)."""
    import ctranslate2
    from faster_whisper.tokenizer import Tokenizer

    tokenizer = Tokenizer(whisper_model.hf_tokenizer, True, task="transcribe", language="en")
    mel = whisper_model.feature_extractor(audio[: 30 * SAMPLE_RATE])[:, :3000]
    features = np.zeros((1, 80, 3000), np.float32)
    features[0, :, : mel.shape[1]] = mel
    prompt = [*tokenizer.sot_sequence, tokenizer.no_timestamps]
    started = time.perf_counter()
    encoded = whisper_model.model.encode(ctranslate2.StorageView.from_array(features))
    encoded_at = time.perf_counter()
    result = whisper_model.model.generate(
        encoded,
        [prompt],
        beam_size=1,
        max_length=tokens + len(prompt),
        suppress_tokens=[tokenizer.eot],
        suppress_blank=False,
    )
    return time.perf_counter() - started, len(result[0].sequences_ids[0]), encoded_at - started


def openai_whisper_window(audio: np.ndarray, tokens: int) -> tuple[float, float]:
    """(seconds for encoder + decoding, seconds of the encoder alone)."""
    import whisper
    from whisper.model import ModelDimensions, Whisper
    from whisper.tokenizer import get_tokenizer

    dims = ModelDimensions(80, 1500, 512, 8, 6, 51865, 448, 512, 8, 6)  # whisper base
    torch.manual_seed(0)
    model = Whisper(dims).eval()
    tokenizer = get_tokenizer(True, language="en", task="transcribe")
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.from_numpy(audio)))[None]  # (1, 80, 3000)
    prompt = torch.tensor([[*tokenizer.sot_sequence, tokenizer.no_timestamps]])  # (1, 4)
    started = time.perf_counter()
    with torch.inference_mode():
        features = model.encoder(mel)  # (1, 1500, 512)
        encoded_at = time.perf_counter()
        cache, hooks = model.install_kv_cache_hooks()
        logits = model.decoder(prompt, features, kv_cache=cache)  # (1, 4, V)
        for _ in range(tokens):
            logits[:, -1, tokenizer.eot] = -np.inf
            following = logits[:, -1].argmax(-1, keepdim=True)  # (1, 1)
            logits = model.decoder(following, features, kv_cache=cache)  # (1, 1, V)
        for hook in hooks:
            hook.remove()
    return time.perf_counter() - started, encoded_at - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from mmfusion.calls.call import call_analyzer
    from mmfusion.pipeline import Pipeline
    from mmfusion.runtime.quantize import cpu_int8_dot_product

    pipeline = Pipeline("call-centre")
    analyzer = call_analyzer(pipeline)
    waveforms = clips()
    rtf = real_time_factor(analyzer, waveforms)
    streaming = streaming_latency(analyzer, waveforms)
    call = np.concatenate(waveforms)
    whisper_model = analyzer.transcriber.whisper
    # openai-whisper decodes exactly as many tokens as CTranslate2 produced (it cannot be told a minimum).
    ct2_runs = [ctranslate2_window(whisper_model, call, args.tokens) for _ in range(args.repeats)]
    ct2, decoded, ct2_encoder = min(ct2_runs)
    torch_s, torch_encoder = min(openai_whisper_window(call, decoded) for _ in range(args.repeats))
    isa = cpu_int8_dot_product()
    results = {
        "threads": args.threads,
        "real_time": rtf,
        "streaming": streaming,
        "window_30s": {
            "tokens": decoded,
            "ctranslate2_int8_s": round(ct2, 3),
            "openai_whisper_fp32_s": round(torch_s, 3),
            "speedup": round(torch_s / ct2, 2),
            "ctranslate2_encoder_s": round(ct2_encoder, 3),
            "openai_whisper_encoder_s": round(torch_encoder, 3),
            "encoder_speedup": round(torch_encoder / ct2_encoder, 2),
            "decoder_speedup": round((torch_s - torch_encoder) / (ct2 - ct2_encoder), 2),
            "cpu_int8_dot_product": isa,
        },
        "targets": {"rtf": 0.15, "partial_latency_s": 1.5, "speedup": 3.0},
    }
    rows = [
        ("real-time factor (wall), base int8", f"{rtf['rtf']:.3f}", "<= 0.15"),
        ("CPU seconds per audio second", f"{rtf['cpu_seconds_per_audio_second']:.3f}", ""),
        ("partial result latency, median (s)", f"{streaming['median_latency_s']}", ""),
        ("partial result latency, max (s)", f"{streaming['max_latency_s']}", "<= 1.5"),
        (f"30 s window + {decoded} tokens, CTranslate2 int8 (s)", f"{ct2:.3f}", ""),
        (f"30 s window + {decoded} tokens, openai-whisper (s)", f"{torch_s:.3f}", ""),
        ("speed-up vs openai-whisper", f"{torch_s / ct2:.2f}x", ">= 3x"),
        ("  of which encoder (30 s window)", f"{torch_encoder / ct2_encoder:.2f}x", ""),
        (f"  of which decoding {decoded} tokens", f"{(torch_s - torch_encoder) / (ct2 - ct2_encoder):.2f}x", ""),
        ("CPU int8 dot-product instructions", ",".join(isa) or "none", ""),
    ]
    width = max(len(row[0]) for row in rows)
    print(f"{'measure':<{width}}  {'value':>8}  target   ({rtf['audio_seconds']} s of audio, {args.threads} threads)")
    for name, value, target in rows:
        print(f"{name:<{width}}  {value:>8}  {target}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
