"""Content fingerprints for duplicate search: exact hashes, image perceptual hashes, text MinHash, audio bits."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import imagehash
import numpy as np
from datasketch import MinHash
from PIL import Image

from mmfusion.media import SAMPLE_RATE

SHINGLE = 3
"""Characters per text shingle: works alike for Chinese (no spaces) and English."""
MINHASH_PERMUTATIONS = 128
AUDIO_BANDS = 17  # Haitsma-Kalker: 33 bands in 300-2000 Hz; fewer bands suit short clips at 16 kHz
AUDIO_FRAME = 1024
AUDIO_HOP = 512


def sha256_array(array: np.ndarray) -> str:
    """Hash of an array's shape, dtype and bytes: equal for equal content, whatever file format held it."""
    digest = hashlib.sha256(f"{array.shape}{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def normalise_text(text: str) -> str:
    """NFKC (full-width -> half-width), case-folded, whitespace collapsed: the 'same content' form of a text."""
    return " ".join(unicodedata.normalize("NFKC", text).casefold().split())


def text_shingles(text: str) -> set[str]:
    """Character shingles of the normalised text with punctuation and spaces removed."""
    letters = re.sub(r"[\W_]+", "", normalise_text(text))
    if len(letters) <= SHINGLE:
        return {letters} if letters else set()
    return {letters[i : i + SHINGLE] for i in range(len(letters) - SHINGLE + 1)}


def text_minhash(shingles: set[str]) -> MinHash:
    """A MinHash of a shingle set (seed fixed by datasketch, so runs agree)."""
    minhash = MinHash(num_perm=MINHASH_PERMUTATIONS)
    minhash.update_batch([s.encode() for s in sorted(shingles)])
    return minhash


def jaccard(a: set[str], b: set[str]) -> float:
    """Exact Jaccard similarity of two sets (1.0 for two empty sets)."""
    return len(a & b) / len(a | b) if a or b else 1.0


def image_phash(image: np.ndarray) -> int:
    """64-bit DCT perceptual hash of an (H, W, 3) uint8 image as an int."""
    return int(str(imagehash.phash(Image.fromarray(image))), 16)


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


@dataclass(frozen=True)
class AudioFingerprint:
    """Sign bits of band-energy differences over time (Haitsma-Kalker), invariant to loudness."""

    bits: np.ndarray  # (T, AUDIO_BANDS - 1) bool

    def distance(self, other: AudioFingerprint) -> float:
        """Bit error rate over the common length; 1.0 when the lengths differ by more than 10%."""
        a, b = len(self.bits), len(other.bits)
        if min(a, b) == 0 or abs(a - b) > 0.1 * max(a, b):
            return 1.0
        length = min(a, b)
        return float(np.mean(self.bits[:length] != other.bits[:length]))


def audio_fingerprint(waveform: np.ndarray) -> AudioFingerprint:
    """Fingerprint of a 16 kHz mono waveform after trimming leading and trailing silence."""
    loud = np.flatnonzero(np.abs(waveform) > 1e-3 * max(float(np.abs(waveform).max(initial=0.0)), 1e-12))
    waveform = waveform[loud[0] : loud[-1] + 1] if loud.size else waveform[:0]
    if waveform.size < AUDIO_FRAME + AUDIO_HOP:
        return AudioFingerprint(np.zeros((0, AUDIO_BANDS - 1), bool))
    count = 1 + (waveform.size - AUDIO_FRAME) // AUDIO_HOP
    index = np.arange(AUDIO_FRAME)[None, :] + AUDIO_HOP * np.arange(count)[:, None]  # (T, F)
    frames = waveform[index] * np.hanning(AUDIO_FRAME)  # (T, F)
    power = np.abs(np.fft.rfft(frames, axis=1)) ** 2  # (T, F/2+1)
    frequencies = np.fft.rfftfreq(AUDIO_FRAME, 1 / SAMPLE_RATE)
    edges = np.geomspace(300.0, 3000.0, AUDIO_BANDS + 1)
    bands = np.stack(
        [power[:, (frequencies >= lo) & (frequencies < hi)].sum(1) for lo, hi in zip(edges[:-1], edges[1:])], axis=1
    )  # (T, AUDIO_BANDS)
    energy = np.log(bands + 1e-10)
    across = energy[:, :-1] - energy[:, 1:]  # (T, AUDIO_BANDS - 1)
    return AudioFingerprint(across[1:] - across[:-1] > 0)  # (T - 1, AUDIO_BANDS - 1)
