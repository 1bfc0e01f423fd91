"""A camera's StreamInspect calls one after another: a failed call's frame generator must not stall the next."""

from __future__ import annotations

import threading
import time

import grpc
import numpy as np

from mmfusion.cameras.capture import CapturedFrame, LatestFrame
from mmfusion.cameras.config import CameraSpec, ReconnectSpec
from mmfusion.cameras.stream import CameraStream
from mmfusion.client import ServerError
from mmfusion.proto import inspection_pb2 as pb


class Reader:
    """A camera reader's stand-in: a new frame in the one-frame slot every 10 ms until stopped."""

    def __init__(self) -> None:
        self.latest = LatestFrame()
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        number = 0
        while not self.stop.wait(0.01):
            number += 1
            self.latest.put(CapturedFrame(number, np.zeros((8, 8, 3), np.uint8), time.time(), time.monotonic()))


class Client:
    """Reads the request iterator on a thread of its own, as gRPC does. The first call takes one frame and fails
    while that thread is still inside the generator; later calls answer every frame."""

    calls = 0

    def __init__(self) -> None:
        Client.calls += 1
        self.call = Client.calls

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info) -> None:
        pass

    def stream(self, frames):
        answers: list[pb.Frame | None] = []
        ready = threading.Condition()

        def consume() -> None:
            for frame in frames:
                with ready:
                    answers.append(frame)
                    ready.notify_all()
                if self.call == 1 and len(answers) == 1:
                    with ready:
                        answers.append(None)  # the call fails now; this thread reads on, like gRPC's
                        ready.notify_all()

        threading.Thread(target=consume, daemon=True).start()
        taken = 0
        while True:
            with ready:
                ready.wait_for(lambda taken=taken: len(answers) > taken, timeout=1)
                if len(answers) <= taken:
                    return
                frame = answers[taken]
            taken += 1
            if frame is None:
                raise ServerError(grpc.StatusCode.UNAVAILABLE, "replica went away")
            if self.call == 1:
                continue  # the failing call never answers its frame
            yield pb.FrameResult(stream_id=frame.stream_id, sequence_number=frame.sequence_number)


def test_a_failed_call_leaves_the_next_one_room_to_send():
    spec = CameraSpec(name="line-1", url="rtsp://camera/stream", model="pcb-inspect", fps=50, max_pending_frames=1)
    reader = Reader()
    stream = CameraStream(spec, reader, Client, ReconnectSpec(initial_s=0.05, max_s=0.05)).start()
    try:
        deadline = time.monotonic() + 10
        while stream.stats.answered < 20 and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        stream.stop()
        reader.stop.set()
    assert stream.stats.calls >= 2
    # before the fix the first call's generator put one more frame in flight after the call ended, and with
    # max_pending_frames 1 the second call never had room to send: no answer at all
    assert stream.stats.answered >= 20, f"{stream.stats.answered} answers in 10 s after the first call failed"
