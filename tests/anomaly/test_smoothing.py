"""k-of-n smoothing of a camera stream's verdicts: single-frame flicker never reaches the smoothed verdict."""

from __future__ import annotations

from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.streams import StreamState


def smoothed(verdicts: str, window: int, min_count: int) -> str:
    stream = StreamState("cam", "call/cam", "m", "", 2, window, -1, smoothing_min_count=min_count)
    return "".join(stream.smooth(v) for v in verdicts)


def test_k_of_n_changes_verdict_only_after_k_of_the_last_n():
    assert smoothed("ggdggdddgd", window=5, min_count=3) == "ggggggdddd"
    assert smoothed("gdgdgdgg", window=4, min_count=3) == "gggggggg"  # alternating flicker is held back


def test_min_count_zero_keeps_the_majority_vote_and_window_one_is_off():
    assert smoothed("ggdd", window=3, min_count=0) == "gggd"
    assert smoothed("gdgd", window=1, min_count=3) == "gdgd"


def test_stream_options_carry_the_k():
    options = pb.StreamOptions.FromString(
        pb.StreamOptions(smoothing_window=5, smoothing_min_count=3).SerializeToString()
    )
    assert (options.smoothing_window, options.smoothing_min_count) == (5, 3)
