"""faster-whisper (CTranslate2) speech encoder and transcriber; the embedded "base" model by default."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import ctranslate2
import numpy as np
import torch
from faster_whisper import WhisperModel
from faster_whisper.audio import pad_or_trim
from pydantic import Field, field_validator
from whisper.tokenizer import LANGUAGES

from mmfusion.config import LocalPath, PartParams
from mmfusion.encoders.base import Encoder
from mmfusion.encoders.speech_whisper import frame_mask, masked_mean
from mmfusion.media import check_audio
from mmfusion.registry import ENCODERS
from mmfusion.types import Embedding, Modality, Transcript, Word

MODEL_FILES = ("model.bin", "config.json", "tokenizer.json")


class FasterWhisperParams(PartParams):
    """`params:` for speech.faster_whisper; `device: cuda` needs the CUDA 12 / cuDNN 9 libraries CTranslate2 loads."""

    model_dir: LocalPath | None = None
    compute_type: str = "int8"
    device: Literal["auto", "cpu", "cuda"] = "cpu"
    beam_size: int = Field(default=5, ge=1, le=32)
    language: str | None = None
    cpu_threads: int = Field(default=0, ge=0)
    num_workers: int = Field(default=1, ge=1, le=16)  # model replicas that run concurrently (CTranslate2 inter_threads)
    vad_filter: bool = False

    @field_validator("language")
    @classmethod
    def _known_language(cls, language: str | None) -> str | None:
        if language is not None and language not in LANGUAGES:
            raise ValueError(f"language {language!r} is not a whisper language code; expected e.g. en, de, fr, es, zh")
        return language


def _check_model_dir(folder: Path) -> None:
    # A missing folder would make WhisperModel treat the name as a hub id and try to download it.
    if not folder.is_dir():
        raise ValueError(f"model_dir {str(folder)!r} does not exist; expected a CTranslate2 whisper model folder")
    missing = [name for name in MODEL_FILES if not (folder / name).is_file()]
    if missing:
        raise ValueError(
            f"model_dir {str(folder)!r} lacks {', '.join(missing)}; expected a CTranslate2 whisper model folder"
        )


@ENCODERS.register("speech.faster_whisper")
class FasterWhisperEncoder(Encoder):
    """The CTranslate2 whisper encoder as token features (B, 1500, D), plus `transcribe` with word timings.

    It holds no torch parameters: CTranslate2 runs the network, tensors only cross in and out.
    """

    modality = Modality.AUDIO
    Params = FasterWhisperParams
    input_names = ("features", "valid_frames")
    example_params: dict = {}

    def __init__(self, params: FasterWhisperParams) -> None:
        super().__init__(params)
        if params.model_dir is None:
            from mmfusion.encoders.embedded import faster_whisper_base_dir

            folder = faster_whisper_base_dir()
        else:
            folder = Path(params.model_dir)
        _check_model_dir(folder)
        try:
            self.model = WhisperModel(
                str(folder),
                device=params.device,
                compute_type=params.compute_type,
                cpu_threads=params.cpu_threads,
                num_workers=params.num_workers,
            )
        except ValueError as error:  # e.g. a compute_type the device does not support
            raise ValueError(f"model_dir {str(folder)!r}: {error}") from None
        languages = self.model.supported_languages
        if params.language is not None and params.language not in languages:
            raise ValueError(f"language {params.language!r}: this model only knows {', '.join(languages)}")
        extractor = self.model.feature_extractor
        self.window_frames = extractor.nb_max_frames  # 3000 mel frames = 30 s
        self.samples_per_frame = extractor.hop_length * self.model.input_stride  # 320 samples = 20 ms
        self.output_dim = self._encoder_width()

    def _encoder_width(self) -> int:
        # Two mel frames are enough to read the width; a full 30 s window would cost seconds.
        silence = np.zeros((1, self.model.model.n_mels, 2), np.float32)
        return int(self._encode(silence).shape[-1])

    def _encode(self, features: np.ndarray) -> np.ndarray:
        storage = ctranslate2.StorageView.from_array(np.ascontiguousarray(features))
        output = self.model.model.encode(storage, to_cpu=True)
        return np.asarray(output, dtype=np.float32)  # (B, 1500, D)

    def preprocess(self, items: list[Any]) -> dict[str, np.ndarray]:
        features, valid_frames = [], []
        for i, item in enumerate(items):
            waveform = check_audio(item, f"audio[{i}]")
            mel = self.model.feature_extractor(waveform)[:, :-1]  # (80, T) without the padding frame
            features.append(pad_or_trim(mel, self.window_frames))  # (80, 3000), as faster-whisper's own decoding
            valid_frames.append(min(-(-waveform.size // self.samples_per_frame), self.window_frames // 2))
        return {
            "features": np.stack(features).astype(np.float32),  # (B, 80, 3000)
            "valid_frames": np.asarray(valid_frames, dtype=np.int64),  # (B,)
        }

    def forward(self, features: torch.Tensor, valid_frames: torch.Tensor) -> Embedding:
        encoded = self._encode(features.detach().cpu().numpy())  # (B, 1500, D)
        tokens = torch.from_numpy(encoded).to(features.device)  # (B, 1500, D)
        mask = frame_mask(valid_frames.to(features.device), tokens.shape[1])  # (B, L)
        return Embedding(tokens=tokens, pooled=masked_mean(tokens, mask), mask=mask)

    def transcribe(self, waveform: np.ndarray) -> Transcript:
        """Transcribe a 16 kHz mono waveform into text with word timestamps (seconds)."""
        waveform = check_audio(waveform)
        segments, info = self.model.transcribe(
            waveform,
            language=self.params.language,
            beam_size=self.params.beam_size,
            word_timestamps=True,
            vad_filter=self.params.vad_filter,
        )
        segments = list(segments)  # the generator runs the decoding
        words = tuple(
            Word(
                word=word.word.strip(),
                start=float(word.start),
                end=float(word.end),
                probability=float(word.probability),
            )
            for segment in segments
            for word in segment.words or ()
        )
        text = "".join(segment.text for segment in segments).strip()
        return Transcript(text=text, language=info.language, words=words)
