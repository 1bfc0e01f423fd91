"""StreamSession: answers in order per stream, round-robin across streams, drops reported, bounded memory."""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import pytest

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.scheduler import FrameDroppedError
from mmfusion.serving.streams import MAX_UNANSWERED, FrameWork, StreamSession
from mmfusion.types import InputError

WAIT_S = 10.0


def frame(stream_id: str, sequence: int, first: bool = False) -> pb.Frame:
    return pb.Frame(stream_id=stream_id, sequence_number=sequence, model="m" if first else "")


class Starter:
    """A start callback whose futures the test resolves by (stream id, sequence number)."""

    def __init__(self, resolved: bool = False) -> None:
        self.futures: dict[tuple[str, int], Future] = {}
        self.resolved = resolved
        self.started = threading.Event()

    def __call__(self, stream, incoming: pb.Frame) -> FrameWork:
        future: Future = Future()
        if self.resolved:
            future.set_result(incoming.sequence_number)
        self.futures[(incoming.stream_id, incoming.sequence_number)] = future
        self.started.set()
        return FrameWork(future)

    def wait_for(self, count: int) -> None:
        deadline = time.monotonic() + WAIT_S
        while len(self.futures) < count:
            assert time.monotonic() < deadline
            time.sleep(0.01)


def answers(session: StreamSession) -> list[tuple[str, int, list[int]]]:
    return [(stream.stream_id, slot.sequence_number, skipped) for stream, slot, skipped in session]


def test_dropped_frames_are_reported_with_their_streams_next_answer():
    starter = Starter()
    frames = [frame("a", 0, first=True), frame("b", 0, first=True), frame("a", 1), frame("a", 2), frame("a", 3)]
    session = StreamSession(frames, starter, call_id=1)
    starter.wait_for(5)
    for key in (("a", 1), ("a", 2)):
        starter.futures[key].set_exception(FrameDroppedError("superseded"))
    for key in (("a", 3), ("b", 0), ("a", 0)):  # completion order differs from the answer order
        starter.futures[key].set_result(key)
    assert answers(session) == [("a", 0, []), ("b", 0, []), ("a", 3, [1, 2])]


def test_a_stream_waits_for_its_own_oldest_frame_but_not_for_other_streams():
    starter = Starter()
    session = StreamSession([frame("slow", 0, first=True), frame("slow", 1), frame("fast", 5, first=True)], starter, 2)
    starter.wait_for(3)
    starter.futures[("slow", 1)].set_result(1)
    starter.futures[("fast", 5)].set_result(5)
    taken = iter(session)
    assert next(taken)[0].stream_id == "fast"  # slow's frame 1 is done but its frame 0 is not
    starter.futures[("slow", 0)].set_result(0)
    assert [(stream.stream_id, slot.sequence_number) for stream, slot, _ in taken] == [("slow", 0), ("slow", 1)]


def test_the_reader_waits_when_a_stream_has_too_many_unanswered_frames():
    starter = Starter(resolved=True)
    count = MAX_UNANSWERED + 20
    session = StreamSession([frame("cam", i, first=i == 0) for i in range(count)], starter, 3)
    starter.wait_for(MAX_UNANSWERED)
    time.sleep(0.2)
    assert len(starter.futures) == MAX_UNANSWERED  # nobody took an answer yet: the reader holds back
    assert [sequence for _, sequence, _ in answers(session)] == list(range(count))


def test_protocol_errors_end_the_call():
    session = StreamSession([frame("cam", 3, first=True), frame("cam", 3)], Starter(resolved=True), 4)
    with pytest.raises(InputError, match="frame.sequence_number: 3 on stream 'cam' after 3"):
        answers(session)


def test_stop_cancels_frames_not_yet_served():
    starter = Starter()
    session = StreamSession([frame("cam", 0, first=True), frame("cam", 1)], starter, 5)
    starter.wait_for(2)
    session.stop()
    assert all(future.cancelled() for future in starter.futures.values())
    assert answers(session) == []
