"""Camera streams of one StreamInspect call: frames start as they arrive, answers go out in order per stream.

A reader thread checks each frame against its stream's protocol and hands it to `start`, which
submits it to the model's scheduler (and drops that stream's oldest unserved frames there). The
call's thread takes answers round-robin across streams, each stream strictly in sequence order;
frames the scheduler dropped are reported in the skipped list of their stream's next answer.

A call carries at most MAX_STREAMS_PER_CALL camera streams, with ids of at most MAX_STREAM_ID_CHARS
(they label the stream metrics), and a client's max_pending_frames is clamped to MAX_PENDING_FRAMES.
When the server ends the client's input early (a time limit, or shutdown), the frames already taken
are answered before the call ends with that status.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.scheduler import FrameDroppedError
from mmfusion.serving.stream_limits import LimitExceeded, StreamEnded
from mmfusion.types import InputError

DEFAULT_MAX_PENDING = 2
MAX_PENDING_FRAMES = 8  # the server's cap on a stream's max_pending_frames (larger requests are clamped)
MAX_STREAMS_PER_CALL = 16  # camera streams one call may carry
MAX_STREAM_ID_CHARS = 128
# frames of one stream started but not yet answered; beyond this the reader waits, which pushes back
# on a client that sends without reading its answers (through gRPC flow control) instead of
# holding ever more computed results in memory
MAX_UNANSWERED = 64
FPS_WINDOW = 30  # answers the frame rate is measured over


@dataclass
class FrameWork:
    """A frame handed to a model: the future of its outcome, and what answering it needs."""

    future: Future
    entry: Any = None
    received: float = 0.0
    submitted: float = 0.0


@dataclass
class FrameSlot:
    """A frame of a stream waiting for its answer."""

    sequence_number: int
    capture_time: Timestamp
    work: FrameWork


@dataclass
class StreamState:
    """What the server remembers about one camera stream within a call."""

    stream_id: str
    key: str  # the stream's queue in the model's scheduler: unique to this call
    model: str
    version: str
    max_pending: int
    smoothing_window: int
    last_sequence: int
    smoothing_min_count: int = 0
    include_heatmap: bool = False
    heatmap_max_side: int = 0  # 0: the image's size
    reference: Any = None  # the decoded golden template (H, W, 3) of template models, from a frame's reference_image
    pending: deque[FrameSlot] = field(default_factory=deque)
    skipped: list[int] = field(default_factory=list)
    verdicts: deque = field(default_factory=deque)
    reported: str | None = None
    answered_at: deque[float] = field(default_factory=lambda: deque(maxlen=FPS_WINDOW))

    def smooth(self, verdict: str) -> str:
        """Majority over the last smoothing_window verdicts (ties go to the most recent); with a
        smoothing_min_count k, k-of-n: the reported verdict changes only to one seen in k of the last n."""
        if self.smoothing_window <= 1:
            return verdict
        self.verdicts.append(verdict)
        while len(self.verdicts) > self.smoothing_window:
            self.verdicts.popleft()
        counts = Counter(self.verdicts)
        if self.smoothing_min_count > 0:
            if self.reported is None or counts[verdict] >= self.smoothing_min_count:
                self.reported = verdict
            return self.reported
        best = max(counts.values())
        return next(v for v in reversed(self.verdicts) if counts[v] == best)

    def answered(self) -> float:
        """Note one answer now; the stream's answered frames per second over the last FPS_WINDOW answers."""
        self.answered_at.append(time.monotonic())
        span = self.answered_at[-1] - self.answered_at[0]
        return (len(self.answered_at) - 1) / span if span > 0 else 0.0


FrameStarter = Callable[[StreamState, pb.Frame], FrameWork]


def _dropped(slot: FrameSlot) -> bool:
    future = slot.work.future
    return future.done() and not future.cancelled() and isinstance(future.exception(), FrameDroppedError)


class StreamSession:
    """The camera streams of one call; iterate for (stream, slot, skipped sequence numbers) in order per stream."""

    def __init__(
        self,
        frames: Iterable[pb.Frame],
        start: FrameStarter,
        call_id: int,
        max_streams: int = MAX_STREAMS_PER_CALL,
        max_pending: int = MAX_PENDING_FRAMES,
    ) -> None:
        self._frames = frames
        self._start = start
        self._call_id = call_id
        self._max_streams = max_streams
        self._max_pending = max_pending
        self._streams: dict[str, StreamState] = {}
        self._order: deque[str] = deque()  # stream ids, rotated as answers are taken
        self._condition = threading.Condition()
        self._finished = False
        self._stopped = False
        self._error: Exception | None = None
        self._ending: StreamEnded | None = None  # the server ended the input: raised once the answers are out
        self.seen_any = False
        # in the call's context: its frames are queued under its request id and RPC span (logs, traces)
        reader = contextvars.copy_context().run
        self._reader = threading.Thread(target=reader, args=(self._read,), name=f"stream-reader-{call_id}", daemon=True)
        self._reader.start()

    @property
    def stream_ids(self) -> list[str]:
        """The camera streams seen in this call."""
        with self._condition:
            return list(self._streams)

    def _admit(self, frame: pb.Frame) -> StreamState:
        """Check a frame against its stream's protocol; create the stream on its first frame."""
        if not frame.stream_id:
            raise InputError(f"frame.stream_id: empty (sequence number {frame.sequence_number}); every frame needs one")
        if len(frame.stream_id) > MAX_STREAM_ID_CHARS:
            raise InputError(
                f"frame.stream_id: {frame.stream_id[:32]!r}... has {len(frame.stream_id)} characters; "
                f"expected at most {MAX_STREAM_ID_CHARS}"
            )
        stream = self._streams.get(frame.stream_id)
        if stream is None:
            if len(self._streams) >= self._max_streams:
                raise LimitExceeded(
                    f"frame.stream_id: {frame.stream_id!r} would be stream {len(self._streams) + 1} of this call; "
                    f"expected at most {self._max_streams} streams per call (max_streams_per_call); "
                    "open another call for more cameras"
                )
            if not frame.model:
                raise InputError(f"frame.model: empty on the first frame of stream {frame.stream_id!r}")
            options = frame.options
            stream = StreamState(
                stream_id=frame.stream_id,
                key=f"{self._call_id}/{frame.stream_id}",
                model=frame.model,
                version=frame.version,
                max_pending=min(options.max_pending_frames or DEFAULT_MAX_PENDING, self._max_pending),
                smoothing_window=options.smoothing_window,
                last_sequence=-1,
                smoothing_min_count=options.smoothing_min_count,
                include_heatmap=options.include_heatmap,
                heatmap_max_side=options.heatmap_max_side,
            )
        elif frame.model and frame.model != stream.model:
            raise InputError(
                f"frame.model: {frame.model!r} on stream {frame.stream_id!r}, which started with {stream.model!r}"
            )
        if frame.sequence_number <= stream.last_sequence:
            raise InputError(
                f"frame.sequence_number: {frame.sequence_number} on stream {frame.stream_id!r} after "
                f"{stream.last_sequence}; expected strictly increasing sequence numbers"
            )
        return stream

    def _accept(self, frame: pb.Frame) -> None:
        """Admit a frame, start it on its model, and queue its slot for the answer."""
        with self._condition:
            self.seen_any = True
            stream = self._admit(frame)
            self._condition.wait_for(lambda: len(stream.pending) < MAX_UNANSWERED or self._stopped)
            if self._stopped:
                return
        work = self._start(stream, frame)
        capture_time = Timestamp()
        capture_time.CopyFrom(frame.capture_time)
        with self._condition:
            if stream.stream_id not in self._streams:
                self._streams[stream.stream_id] = stream
                self._order.append(stream.stream_id)
            stream.last_sequence = frame.sequence_number
            stream.pending.append(FrameSlot(frame.sequence_number, capture_time, work))
        work.future.add_done_callback(self._wake)

    def _read(self) -> None:
        frames = iter(self._frames)
        try:
            while True:
                try:
                    frame = next(frames)
                except StopIteration:
                    return
                except StreamEnded as ended:  # a time limit or shutdown: answer what was taken, then end
                    with self._condition:
                        self._ending = ended
                    return
                except Exception:  # the client went away mid-call: nobody is left to answer
                    return
                self._accept(frame)
                if self._stopped:
                    return
        except Exception as error:  # a protocol or model error: it ends the call with its status
            with self._condition:
                self._error = error
        finally:
            with self._condition:
                self._finished = True
                self._condition.notify_all()

    def _wake(self, _future: Future | None = None) -> None:
        with self._condition:
            self._condition.notify_all()

    def _take(self) -> tuple[StreamState, FrameSlot, list[int]] | None:
        """The next answered frame, round-robin over streams; dropped heads go to their stream's skipped list."""
        for _ in range(len(self._order)):
            stream = self._streams[self._order[0]]
            self._order.rotate(-1)
            unanswered = len(stream.pending)
            while stream.pending and _dropped(stream.pending[0]):
                stream.skipped.append(stream.pending.popleft().sequence_number)
            taken = None
            if stream.pending and stream.pending[0].work.future.done():
                skipped, stream.skipped = stream.skipped, []
                taken = stream, stream.pending.popleft(), skipped
            if len(stream.pending) < unanswered:
                self._condition.notify_all()  # the reader may be waiting for this stream to have room
            if taken is not None:
                return taken
        return None

    def __iter__(self) -> Iterator[tuple[StreamState, FrameSlot, list[int]]]:
        """Answered frames until the client is done; raises the call's protocol or model error."""
        while True:
            with self._condition:
                while True:
                    if self._error is not None:
                        raise self._error
                    if self._stopped:
                        return
                    taken = self._take()
                    if taken is not None:
                        break
                    if self._finished and not any(stream.pending for stream in self._streams.values()):
                        if self._ending is not None:
                            raise self._ending
                        return
                    self._condition.wait()
            yield taken

    def stop(self) -> None:
        """The call ended: stop answering and cancel frames still queued (they are never computed)."""
        with self._condition:
            self._stopped = True
            slots = [slot for stream in self._streams.values() for slot in stream.pending]
            self._condition.notify_all()
        for slot in slots:
            slot.work.future.cancel()
