"""Segments of concurrent calls transcribed together: one whisper batch per round instead of one call at a time."""

from __future__ import annotations

import threading
from concurrent.futures import Future

from mmfusion.calls.transcribe import SegmentTranscriber, SpeechRequest, SpeechText


class SpeechBatcher:
    """Worker threads that each take every segment waiting (up to `max_batch`) and decode them as one batch.

    While a batch runs, the segments that close in other calls queue up and form the next one, so the
    batch grows with the load and a lone call waits for nothing. There is one worker per whisper model
    replica (`num_workers` of speech.faster_whisper), so replicas decode different batches at once.
    """

    def __init__(self, transcriber: SegmentTranscriber, max_batch: int = 8, workers: int = 1) -> None:
        self.transcriber = transcriber
        self.max_batch = max_batch
        self.workers = workers
        self._waiting: list[tuple[SpeechRequest, Future]] = []
        self._ready = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.batch_sizes: list[int] = []  # every batch run (the benchmark reads it)

    def transcribe(self, requests: list[SpeechRequest]) -> list[SpeechText]:
        """Each request's text, decoded in whichever batch it joins; errors are raised in the caller."""
        futures = [Future() for _ in requests]
        with self._ready:
            self._waiting += zip(requests, futures)
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            while len(self._threads) < self.workers:
                self._threads.append(threading.Thread(target=self._run, name="speech-batcher", daemon=True))
                self._threads[-1].start()
            self._ready.notify_all()
        return [future.result() for future in futures]

    def _run(self) -> None:
        while True:
            with self._ready:
                while not self._waiting:
                    self._ready.wait()
                take = min(self.max_batch, -(-len(self._waiting) // self.workers))  # idle replicas share the work
                batch, self._waiting = self._waiting[:take], self._waiting[take:]
            self.batch_sizes.append(len(batch))
            try:
                said = self.transcriber.transcribe_batch([request for request, _ in batch])
            except Exception as error:  # the callers raise it; the worker keeps serving
                for _, future in batch:
                    future.set_exception(error)
                continue
            for (_, future), text in zip(batch, said):
                future.set_result(text)
