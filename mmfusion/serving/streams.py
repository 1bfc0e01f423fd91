"""Camera streams of one StreamInspect call: bounded per-stream queues, oldest-first drops, smoothing."""

from __future__ import annotations

import threading
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.types import InputError

DEFAULT_MAX_PENDING = 2


@dataclass
class StreamState:
    """What the server remembers about one camera stream within a call."""

    stream_id: str
    model: str
    version: str
    max_pending: int
    smoothing_window: int
    last_sequence: int
    pending: deque = field(default_factory=deque)
    skipped: list[int] = field(default_factory=list)
    verdicts: deque = field(default_factory=deque)

    def smooth(self, verdict: str) -> str:
        """Majority over the last smoothing_window verdicts; ties go to the most recent."""
        if self.smoothing_window <= 1:
            return verdict
        self.verdicts.append(verdict)
        while len(self.verdicts) > self.smoothing_window:
            self.verdicts.popleft()
        counts = Counter(self.verdicts)
        best = max(counts.values())
        return next(v for v in reversed(self.verdicts) if counts[v] == best)


class FrameQueue:
    """Reads a call's frames on a thread; hands them out round-robin across streams, oldest first."""

    def __init__(self, frames: Iterable[pb.Frame]) -> None:
        self._frames = frames
        self._streams: dict[str, StreamState] = {}
        self._order: deque[str] = deque()  # streams with pending frames, in round-robin order
        self._condition = threading.Condition()
        self._finished = False
        self._error: Exception | None = None
        self.seen_any = False
        self._reader = threading.Thread(target=self._read, name="frame-reader", daemon=True)
        self._reader.start()

    def _admit(self, frame: pb.Frame) -> StreamState:
        """Check a frame against its stream's protocol; create the stream on its first frame."""
        if not frame.stream_id:
            raise InputError(f"frame.stream_id: empty (sequence number {frame.sequence_number}); every frame needs one")
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if not frame.model:
                raise InputError(f"frame.model: empty on the first frame of stream {frame.stream_id!r}")
            options = frame.options
            stream = StreamState(
                stream_id=frame.stream_id,
                model=frame.model,
                version=frame.version,
                max_pending=options.max_pending_frames or DEFAULT_MAX_PENDING,
                smoothing_window=options.smoothing_window,
                last_sequence=-1,
            )
            self._streams[frame.stream_id] = stream
        elif frame.model and frame.model != stream.model:
            raise InputError(
                f"frame.model: {frame.model!r} on stream {frame.stream_id!r}, which started with {stream.model!r}"
            )
        if frame.sequence_number <= stream.last_sequence:
            raise InputError(
                f"frame.sequence_number: {frame.sequence_number} on stream {frame.stream_id!r} after "
                f"{stream.last_sequence}; expected strictly increasing sequence numbers"
            )
        stream.last_sequence = frame.sequence_number
        return stream

    def _read(self) -> None:
        try:
            for frame in self._frames:
                with self._condition:
                    self.seen_any = True
                    stream = self._admit(frame)
                    if not stream.pending:
                        self._order.append(stream.stream_id)
                    stream.pending.append(frame)
                    while len(stream.pending) > stream.max_pending:
                        stream.skipped.append(stream.pending.popleft().sequence_number)
                    self._condition.notify()
        except Exception as error:  # a protocol InputError, or the client went away mid-call
            with self._condition:
                self._error = error
        finally:
            with self._condition:
                self._finished = True
                self._condition.notify_all()

    def __iter__(self) -> Iterator[tuple[StreamState, pb.Frame, list[int]]]:
        """(stream, frame, sequence numbers dropped before it) until the client is done; raises protocol errors."""
        while True:
            with self._condition:
                self._condition.wait_for(lambda: self._order or self._finished or self._error)
                if isinstance(self._error, InputError):
                    raise self._error
                if self._error is not None:  # the client went away: nobody is left to answer
                    return
                if not self._order:
                    return
                stream = self._streams[self._order.popleft()]
                frame = stream.pending.popleft()
                if stream.pending:
                    self._order.append(stream.stream_id)
                skipped, stream.skipped = stream.skipped, []
            yield stream, frame, skipped

    def stop(self) -> None:
        """Stop waiting on the reader (it ends with the call)."""
        with self._condition:
            self._finished = True
            self._condition.notify_all()
