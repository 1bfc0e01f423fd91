"""Segments of concurrent calls decode in shared whisper batches, and each call still gets its own text."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from mmfusion.calls.batching import SpeechBatcher
from mmfusion.calls.transcribe import SpeechRequest, SpeechText
from mmfusion.evaluation.asr_suite import read_clips
from tests.conftest import LIBRIVOX


class SlowTranscriber:
    """Stands in for whisper: 50 ms per batch, echoes each request's offset as its text."""

    def __init__(self, fail_on: float | None = None) -> None:
        self.batches: list[list[float]] = []
        self.spans: list[tuple[float, float]] = []  # when each batch ran
        self.fail_on = fail_on

    def transcribe_batch(self, requests: list[SpeechRequest]) -> list[SpeechText]:
        self.batches.append([r.offset for r in requests])
        started = time.perf_counter()
        time.sleep(0.05)
        self.spans.append((started, time.perf_counter()))
        if self.fail_on in self.batches[-1]:
            raise RuntimeError("whisper failed")
        return [SpeechText(str(r.offset), "en", 1.0, ()) for r in requests]


def _concurrently(batcher: SpeechBatcher, offsets: list[float]) -> dict[float, object]:
    results: dict[float, object] = {}

    def call(offset: float) -> None:
        try:
            results[offset] = batcher.transcribe([SpeechRequest(np.zeros(16000, np.float32), offset)])[0].text
        except RuntimeError as error:
            results[offset] = error

    threads = [threading.Thread(target=call, args=(offset,)) for offset in offsets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return results


def test_waiting_segments_of_many_calls_form_one_batch():
    fake = SlowTranscriber()
    batcher = SpeechBatcher(fake, max_batch=8)  # type: ignore[arg-type]
    results = _concurrently(batcher, [float(i) for i in range(12)])
    assert results == {float(i): str(float(i)) for i in range(12)}  # every call gets its own text
    assert max(len(batch) for batch in fake.batches) > 1  # calls shared batches
    assert all(len(batch) <= 8 for batch in fake.batches)
    assert sorted(o for batch in fake.batches for o in batch) == [float(i) for i in range(12)]


def test_a_failed_batch_fails_its_calls_and_the_worker_goes_on():
    fake = SlowTranscriber(fail_on=3.0)
    batcher = SpeechBatcher(fake, max_batch=1)  # type: ignore[arg-type]
    results = _concurrently(batcher, [1.0, 2.0, 3.0, 4.0])
    assert isinstance(results[3.0], RuntimeError)
    assert {k: v for k, v in results.items() if k != 3.0} == {1.0: "1.0", 2.0: "2.0", 4.0: "4.0"}
    assert batcher.transcribe([SpeechRequest(np.zeros(10, np.float32), 5.0)])[0].text == "5.0"


def test_workers_decode_batches_side_by_side():
    fake = SlowTranscriber()
    batcher = SpeechBatcher(fake, max_batch=1, workers=4)  # type: ignore[arg-type]
    _concurrently(batcher, [1.0, 2.0, 3.0, 4.0])
    # batches ran at once, not one after another: some batch started before another one ended
    assert len(fake.spans) == 4
    assert any(a[0] < b[1] and b[0] < a[1] for i, a in enumerate(fake.spans) for b in fake.spans[i + 1 :])


@pytest.mark.parametrize("count", [3])
def test_concurrent_calls_get_the_texts_they_get_alone(analyzer, count):
    clips = [samples for _, samples, _ in read_clips(LIBRIVOX)][:count]
    alone = [analyzer.transcriber.transcribe(clip).text for clip in clips]
    analyzer.batcher.batch_sizes.clear()
    texts: dict[int, str] = {}

    def call(index: int) -> None:
        texts[index] = analyzer.batcher.transcribe([SpeechRequest(clips[index])])[0].text

    threads = [threading.Thread(target=call, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [texts[index] for index in range(count)] == alone
    together = analyzer.transcriber.transcribe_batch([SpeechRequest(clip) for clip in clips])
    assert [said.text for said in together] == alone  # one batch decodes each as it decodes alone
