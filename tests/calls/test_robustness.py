"""Calls that broke transcription: pauses, duplicated stereo, other sample rates, a short phrase, no speech at all."""

from __future__ import annotations

import numpy as np
import pytest

from mmfusion.calls.asr_eval import score
from mmfusion.calls.decode import decode_call_audio, same_signal
from mmfusion.calls.transcribe import compression_ratio, drop_loops
from mmfusion.evaluation.asr_suite import NO_SPEECH, build_suite, repeated_phrase
from tests.calls.conftest import wav_bytes
from tests.conftest import LIBRIVOX

MAX_WER = 0.05
MAX_CLAUSES_WER = 0.20  # phrases cut out of running speech: harder than real pauses (measured 0.10-0.11)
CASES = {case.name: case for case in build_suite(LIBRIVOX)}


@pytest.fixture(scope="module")
def analyses(analyzer) -> dict:
    """Each suite case through the call analyzer as a file (WAV at the case's own rate and channels)."""
    return {
        name: analyzer.analyze(decode_call_audio(wav_bytes(case.channels, case.rate))) for name, case in CASES.items()
    }


@pytest.mark.parametrize("name", ["pauses", "stereo-same", "44k", "8k", "short"])
def test_word_error_rate_within_five_percent(analyses, name):
    text = analyses[name].transcript().text
    metric, error_rate = score(CASES[name].reference, text)
    assert metric == "wer" and error_rate <= MAX_WER, f"{name}: WER {error_rate:.3f}: {text!r}"


def test_phrases_cut_from_running_speech_stay_readable(analyses):
    text = analyses["clauses"].transcript().text
    assert score(CASES["clauses"].reference, text)[1] <= MAX_CLAUSES_WER, text


@pytest.mark.parametrize("name", sorted(CASES))
def test_no_phrase_repeats_in_a_loop(analyses, name):
    text = analyses[name].transcript().text
    assert repeated_phrase(text) is None, f"{name}: {repeated_phrase(text)!r} repeats in {text!r}"
    for segment in analyses[name].segments:
        assert compression_ratio(segment.text) <= 2.4, segment.text


@pytest.mark.parametrize("name", NO_SPEECH)
def test_no_speech_gives_no_text(analyses, name):
    assert analyses[name].transcript().text == ""
    assert all(not segment.text for segment in analyses[name].segments)


def test_duplicated_stereo_is_one_speaker_stream(analyses):
    stereo, mono = analyses["stereo-same"], analyses["pauses"]
    assert stereo.speakers == mono.speakers == ("speaker",)
    assert [s.text for s in stereo.segments] == [s.text for s in mono.segments]


def test_same_signal_tells_copies_from_two_speakers():
    rng = np.random.default_rng(0)
    voice = rng.standard_normal(16000).astype(np.float32) * 0.1
    other = rng.standard_normal(16000).astype(np.float32) * 0.1
    assert same_signal(np.stack([voice, 0.5 * voice])) is True  # a copy at another level
    assert same_signal(np.stack([voice, other])) is False
    assert same_signal(np.stack([voice, np.zeros_like(voice)])) is False  # one side silent: two speakers
    assert same_signal(np.zeros((2, 16000), np.float32)) is None  # nothing heard yet


def test_streamed_stereo_copy_decides_once_heard(analyzer):
    call = CASES["stereo-same"].channels
    stream = analyzer.stream(2)
    for start in range(0, call.shape[1], 1600):  # 100 ms chunks
        stream.feed(call[:, start : start + 1600])
    analysis = stream.finish()
    assert analysis.speakers == ("speaker",)
    assert score(CASES["pauses"].reference, analysis.transcript().text)[1] <= MAX_WER


def test_silent_stereo_call_keeps_both_speakers(analyzer):
    analysis = analyzer.analyze(decode_call_audio(wav_bytes(np.zeros((2, 32000), np.float32))))
    assert analysis.speakers == ("agent", "customer") and analysis.transcript().text == ""


@pytest.mark.parametrize(
    ("tokens", "expected"),
    [
        ([1, 2, 3, 1, 2, 3, 1, 2, 3, 1, 2, 3, 9], [1, 2, 3, 9]),  # a phrase looping
        ([1, 2, 3, 1, 2, 3, 9], [1, 2, 3, 1, 2, 3, 9]),  # said twice: kept
        ([5, 5, 5, 5, 5, 5], [5]),  # "You You You ..."
        ([5, 5, 5, 7], [5, 5, 5, 7]),  # "no, no, no": kept
        ([4, 1, 2, 1, 2, 1, 2, 1, 2], [4, 1, 2]),
    ],
)
def test_drop_loops_cuts_runs_to_one_copy(tokens, expected):
    assert drop_loops(tokens) == expected


def test_repeated_phrase_finds_loops_only():
    assert repeated_phrase("and so my fellow americans and so my fellow americans and so my fellow americans") == (
        "and so my fellow americans"
    )
    assert repeated_phrase("ask not what your country can do for you, ask what you can do") is None
