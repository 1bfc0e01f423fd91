"""Call audio: robustness (WER per case of the suite), real-time factor, and concurrent live calls on this machine.

    .venv/bin/python benchmarks/audio.py [--threads 2] [--calls 1,4,8,12] [--seconds 30]

1. The robustness suite (mmfusion.evaluation.asr_suite, built from tests/data/librivox): each case
   through the call-centre analyzer as a WAV file at its own rate and channels: WER, whether any
   phrase of 3+ words repeats more than twice in a row, and whether the no-speech cases stay empty.
2. Real-time factor of one call (the `pauses` case): wall seconds per audio second, and CPU seconds.
3. Concurrent live calls: N calls (the `pauses` call, each started 0.37 s after the previous), each
   on its own thread, fed in 200 ms chunks at real time (a chunk is fed when its audio has been
   recorded), as StreamCall does per call. Partial latency = when a segment is out minus when its
   speech ended; lag = how late the last chunk was fed (a call keeps real time when it stays small).
   Segments of concurrent calls decode as shared whisper batches (calls/batching.py); the batch sizes
   are reported. The same run repeats N calls with batching off (one segment per whisper call) as the
   baseline.
Results: tables on stdout and benchmarks/results/audio.json. Other processes on the machine add noise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
CLIPS = REPO / "tests" / "data" / "librivox"
RESULTS = REPO / "benchmarks" / "results" / "audio.json"
SAMPLE_RATE = 16000
CHUNK_SECONDS = 0.2
TARGETS = {"wer": 0.05, "rtf": 0.1, "partial_latency_p95_s": 1.5, "live_calls": 8}


def suite(analyzer) -> list[dict]:
    from mmfusion.calls.asr_eval import score
    from mmfusion.calls.decode import decode_call_audio
    from mmfusion.evaluation.asr_suite import build_suite, repeated_phrase

    rows = []
    for case in build_suite(CLIPS):
        started = time.perf_counter()
        analysis = analyzer.analyze(decode_call_audio(wav_bytes(case.channels, case.rate)))
        seconds = time.perf_counter() - started
        text = analysis.transcript().text
        rows.append(
            {
                "case": case.name,
                "seconds": round(case.duration, 1),
                "channels": case.channels.shape[0],
                "rate": case.rate,
                "speakers": len(analysis.speakers),
                "wer": round(score(case.reference, text)[1], 4) if case.reference else None,
                "text_when_no_speech": text if not case.reference else None,
                "loop": repeated_phrase(text),
                "rtf": round(seconds / case.duration, 3),
            }
        )
    return rows


def wav_bytes(channels: np.ndarray, rate: int) -> bytes:
    """(C, N) float samples as 16-bit WAV bytes."""
    import io

    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, channels.T, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def real_time_factor(analyzer, call: np.ndarray) -> dict:
    from mmfusion.calls.decode import CallAudio

    analyzer.analyze(CallAudio(call[:, : 5 * SAMPLE_RATE], SAMPLE_RATE))  # warm-up
    started, started_cpu = time.perf_counter(), time.process_time()
    analyzer.analyze(CallAudio(call, SAMPLE_RATE))
    wall, cpu = time.perf_counter() - started, time.process_time() - started_cpu
    audio = call.shape[1] / SAMPLE_RATE
    return {"audio_seconds": round(audio, 2), "rtf": round(wall / audio, 4), "cpu_per_audio_s": round(cpu / audio, 4)}


def live_calls(analyzer, call: np.ndarray, count: int) -> dict:
    """`count` calls fed at real time on their own threads: partial latencies, lag, whisper batch sizes."""
    latencies: list[float] = []
    lags: list[float] = []
    step = int(CHUNK_SECONDS * SAMPLE_RATE)
    start = time.perf_counter() + 0.2
    analyzer.batcher.batch_sizes.clear()

    def one(index: int) -> None:
        began = start + 0.37 * index
        stream = analyzer.stream(1)
        for at in range(0, call.size, step):
            due = began + (at + step) / SAMPLE_RATE  # the chunk has been recorded
            time.sleep(max(0.0, due - time.perf_counter()))
            lags.append(time.perf_counter() - due)
            for segment in stream.feed(call[at : at + step]):
                latencies.append(time.perf_counter() - (began + segment.end))
        stream.finish()

    threads = [threading.Thread(target=one, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    latencies.sort()
    return {
        "calls": count,
        "segments": len(latencies),
        "latency_p50_s": round(statistics.median(latencies), 3),
        "latency_p95_s": round(latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))], 3),
        "max_lag_s": round(max(lags), 3),
        "batch_sizes": dict(sorted(Counter(analyzer.batcher.batch_sizes).items())),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--calls", default="1,4,8,12")
    parser.add_argument("--seconds", type=float, default=30.0, help="length of each live call")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    from mmfusion.calls.call import call_analyzer
    from mmfusion.evaluation.asr_suite import build_suite
    from mmfusion.parts import load_all
    from mmfusion.pipeline import Pipeline
    from mmfusion.runtime.quantize import cpu_int8_dot_product

    load_all()
    analyzer = call_analyzer(Pipeline("call-centre"))
    pauses = next(case for case in build_suite(CLIPS) if case.name == "pauses").channels  # (1, N)
    rtf = real_time_factor(analyzer, pauses)
    cases = suite(analyzer)
    live_call = pauses[0, : int(args.seconds * SAMPLE_RATE)]
    counts = [int(n) for n in args.calls.split(",")]
    live = [live_calls(analyzer, live_call, n) for n in counts]
    analyzer.batcher.max_batch = 1  # the baseline: one segment per whisper call
    unbatched = live_calls(analyzer, live_call, max(counts))
    analyzer.batcher.max_batch = 8
    isa = cpu_int8_dot_product()
    kept = [row["calls"] for row in live if row["latency_p95_s"] <= TARGETS["partial_latency_p95_s"]]
    results = {
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "cpu_int8_dot_product": isa,
        "suite": cases,
        "real_time": rtf,
        "live": live,
        "live_unbatched": unbatched,
        "live_calls_within_target": max(kept, default=0),
        "targets": TARGETS,
    }
    print(f"Robustness suite (call-centre, whisper base int8; CPU int8 dot product: {','.join(isa) or 'none'})")
    print(f"{'case':<12} {'s':>5} {'ch':>3} {'rate':>6} {'spk':>4} {'WER':>7} {'loop':>5} {'RTF':>6}  note")
    for row in cases:
        wer = "-" if row["wer"] is None else f"{row['wer']:.3f}"
        note = f"text: {row['text_when_no_speech']!r}" if row["wer"] is None else ""
        print(
            f"{row['case']:<12} {row['seconds']:>5} {row['channels']:>3} {row['rate']:>6} {row['speakers']:>4} "
            f"{wer:>7} {'yes' if row['loop'] else 'no':>5} {row['rtf']:>6}  {note}"
        )
    print(f"\nOne call: RTF {rtf['rtf']} (target <= {TARGETS['rtf']}), CPU s per audio s {rtf['cpu_per_audio_s']}")
    print(f"\nLive calls ({args.seconds:.0f} s each, {CHUNK_SECONDS * 1000:.0f} ms chunks at real time)")
    print(f"{'calls':>5} {'segments':>8} {'p50 s':>6} {'p95 s':>6} {'max lag s':>9}  whisper batch sizes")
    for row in [*live, {**unbatched, "calls": f"{unbatched['calls']}*"}]:
        print(
            f"{row['calls']:>5} {row['segments']:>8} {row['latency_p50_s']:>6} {row['latency_p95_s']:>6} "
            f"{row['max_lag_s']:>9}  {row['batch_sizes']}"
        )
    limit = TARGETS["partial_latency_p95_s"]
    print(f"* batching off (baseline). Calls within p95 <= {limit} s: {max(kept, default=0)}")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
