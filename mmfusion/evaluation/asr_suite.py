"""The call-robustness suite: real speech clips rearranged the ways calls break transcription, with references.

From a folder of clips (16 kHz WAV, each with its transcript in a `.txt` beside it):
- `pauses`: the clips as phrases joined by 0.5-2 s of silence (mono, 16 kHz);
- `stereo-same`: that call with the same signal on both channels (one speaker stream, not two);
- `44k` / `8k`: that call resampled to 44.1 kHz and to 8 kHz (telephone band);
- `short`: a phrase under 1 s between silences;
- `clauses`: every clip cut at its quietest point near the clause boundaries of `CLAUSES`, joined by
  0.5-2 s of silence (short phrases without their sentence: harder than real pauses);
- `silence`, `noise`, `tones`: no speech, so no text is expected.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from math import gcd
from pathlib import Path

import numpy as np

from mmfusion.media import SAMPLE_RATE, decode_audio

# Clause cuts (seconds into the clip, refined to the quietest 10 ms within +-0.2 s) of the LibriVox clips.
CLAUSES: dict[str, list[tuple[float, str]]] = {
    "sense_and_sensibility_01_austen_64kb-0870": [
        (2.56, "and mister john dashwood had then leisure"),
        (5.42, "to consider how much there might be prudently"),
        (0.0, "in his power to do for them"),
    ],
    "sense_and_sensibility_01_austen_64kb-0880": [(0.80, "he was not"), (0.0, "an ill disposed young man")],
    "sense_and_sensibility_01_austen_64kb-0890": [
        (2.02, "unless to be rather cold hearted"),
        (0.0, "and rather selfish is to be ill disposed"),
    ],
    "sense_and_sensibility_01_austen_64kb-0920": [
        (2.46, "had he married a more amiable woman"),
        (0.0, "he might have been made still more respectable than he was"),
    ],
}
SHORT = ("sense_and_sensibility_01_austen_64kb-0880", 0.80, "he was not")  # the clip, its cut (s), the text
NO_SPEECH = ("silence", "noise", "tones")


@dataclass(frozen=True)
class SuiteCase:
    """One case: channels (C, N) float32 at `rate`, the reference text ('' when no speech is expected)."""

    name: str
    channels: np.ndarray
    rate: int
    reference: str

    @property
    def duration(self) -> float:
        return self.channels.shape[1] / self.rate


def read_clips(folder: str | Path) -> list[tuple[str, np.ndarray, str]]:
    """(name, 16 kHz mono samples, reference) of every WAV in the folder that has a transcript."""
    clips = []
    for path in sorted(Path(folder).glob("*.wav")):
        text = path.with_suffix(".txt")
        if text.is_file():
            clips.append((path.stem, decode_audio(path), text.read_text().strip()))
    if not clips:
        raise FileNotFoundError(f"{folder}: no WAV clips with a .txt transcript beside them")
    return clips


def quietest(samples: np.ndarray, seconds: float, span: float = 0.2) -> int:
    """The sample index of the quietest 10 ms within +-span s of `seconds` (a cut between words)."""
    hop = SAMPLE_RATE // 100
    start = max(0, int((seconds - span) * SAMPLE_RATE))
    stop = min(samples.size, int((seconds + span) * SAMPLE_RATE))
    frames = samples[start : start + (stop - start) // hop * hop].reshape(-1, hop)  # (F, 160)
    return start + hop * int(np.argmin(np.square(frames).mean(1))) + hop // 2


def with_pauses(pieces: list[np.ndarray], rng: np.random.Generator) -> np.ndarray:
    """Pieces joined by silences of 0.5-2 s, with 0.3 s of silence before the first."""
    parts = [np.zeros(int(0.3 * SAMPLE_RATE), np.float32)]
    for piece in pieces:
        parts += [piece, np.zeros(int(rng.uniform(0.5, 2.0) * SAMPLE_RATE), np.float32)]
    return np.concatenate(parts)  # (N,)


def resampled(samples: np.ndarray, rate: int) -> np.ndarray:
    """(C, N) at 16 kHz -> (C, M) at `rate`."""
    from scipy.signal import resample_poly

    common = gcd(rate, SAMPLE_RATE)
    return resample_poly(samples, rate // common, SAMPLE_RATE // common, axis=-1).astype(np.float32)


def clause_pieces(clips: list[tuple[str, np.ndarray, str]]) -> list[tuple[np.ndarray, str]]:
    """Each clip cut at its clause boundaries (whole when it has none listed), with each piece's text."""
    pieces = []
    for name, samples, text in clips:
        cuts = CLAUSES.get(name)
        if cuts is None:
            pieces.append((samples, text))
            continue
        bounds = [0] + [quietest(samples, at) for at, _ in cuts[:-1]] + [samples.size]
        pieces += [(samples[a:b], said) for (a, b), (_, said) in zip(zip(bounds, bounds[1:]), cuts)]
    return pieces


def no_speech(seconds: float, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Silence, white noise and a music-like sequence of chords, each `seconds` long (16 kHz)."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    chords = np.zeros_like(t)
    for index, root in enumerate([220.0, 261.6, 329.6, 392.0] * int(seconds)):
        part = (t >= index * 0.5) & (t < (index + 1) * 0.5)  # a chord every 0.5 s
        for ratio in (1.0, 1.26, 1.5):
            chords[part] += np.sin(2 * np.pi * root * ratio * t[part]) / 3
    return {
        "silence": np.zeros(t.size, np.float32),
        "noise": (0.05 * rng.standard_normal(t.size)).astype(np.float32),
        "tones": (0.3 * chords).astype(np.float32),
    }


def build_suite(folder: str | Path, seed: int = 0) -> list[SuiteCase]:
    """Every case of the suite from the clips in `folder` (fixed seed: the same audio every time)."""
    clips = read_clips(folder)
    rng = np.random.default_rng(seed)
    call = with_pauses([samples for _, samples, _ in clips], rng)[None]  # (1, N)
    reference = " ".join(text for _, _, text in clips)
    cases = [
        SuiteCase("pauses", call, SAMPLE_RATE, reference),
        SuiteCase("stereo-same", np.concatenate([call, call]), SAMPLE_RATE, reference),
        SuiteCase("44k", resampled(call, 44100), 44100, reference),
        SuiteCase("8k", resampled(call, 8000), 8000, reference),
    ]
    by_name = {name: samples for name, samples, _ in clips}
    if SHORT[0] in by_name:
        samples = by_name[SHORT[0]]
        short = samples[: quietest(samples, SHORT[1])]
        cases.append(SuiteCase("short", with_pauses([short], rng)[None], SAMPLE_RATE, SHORT[2]))
    pieces = clause_pieces(clips)
    clauses = with_pauses([piece for piece, _ in pieces], rng)[None]
    cases.append(SuiteCase("clauses", clauses, SAMPLE_RATE, " ".join(text for _, text in pieces)))
    cases += [SuiteCase(name, audio[None], SAMPLE_RATE, "") for name, audio in no_speech(10.0, rng).items()]
    return cases


def repeated_phrase(text: str, min_words: int = 3, max_repeats: int = 2) -> str | None:
    """The first phrase of `min_words`+ words said more than `max_repeats` times in a row (a loop), else None."""
    words = re.findall(r"[\w']+", text.lower())
    for size in range(min_words, len(words) // (max_repeats + 1) + 1):
        for start in range(len(words) - size * (max_repeats + 1) + 1):
            phrase = words[start : start + size]
            if all(words[start + k * size : start + (k + 1) * size] == phrase for k in range(1, max_repeats + 1)):
                return " ".join(phrase)
    return None
