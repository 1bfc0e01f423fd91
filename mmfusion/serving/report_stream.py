"""GenerateReport's stream: the report writer runs on the model's scheduler, its text relayed as it comes."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterator
from concurrent.futures import CancelledError

import grpc

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.reports.writer import ReportWriter
from mmfusion.serving.batching import Call
from mmfusion.serving.deadlines import deadline_of
from mmfusion.serving.dispatch import submit
from mmfusion.serving.models import ModelEntry
from mmfusion.serving.scheduler import DeadlineExceededError


def report_chunks(
    entry: ModelEntry, head: str, images: list, text: str, context: grpc.ServicerContext
) -> Iterator[pb.ReportChunk]:
    """Run the report head's `write` on the model's scheduler and relay its text as it comes, then the fields."""
    pieces: queue.SimpleQueue = queue.SimpleQueue()
    client_left = threading.Event()
    context.add_callback(client_left.set)

    def emit(piece: str) -> None:
        if client_left.is_set():
            raise CancelledError("the client left; report generation stopped")
        pieces.put(piece)

    def write(pipeline):
        return ReportWriter(pipeline, head).write(images, text or None, emit)

    deadline = deadline_of(context)
    future = submit(entry, Call(write), deadline=deadline)
    context.add_callback(future.cancel)
    future.add_done_callback(lambda _: pieces.put(None))
    while True:
        try:
            piece = pieces.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            future.cancel()
            raise DeadlineExceededError(
                f"model {entry.name!r}: the deadline passed while the report was written"
            ) from None
        if piece is None:
            break
        yield pb.ReportChunk(text=piece)
    report = future.result().unwrap()
    yield pb.ReportChunk(fields=report.flat_fields(), final=True)
