import datetime

from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_ENCODING_UNSPECIFIED: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_JPEG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_PNG: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW_RGB8: _ClassVar[ImageEncoding]
    IMAGE_ENCODING_RAW_GRAY8: _ClassVar[ImageEncoding]

class AudioEncoding(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AUDIO_ENCODING_UNSPECIFIED: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_PCM16: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_WAV: _ClassVar[AudioEncoding]
    AUDIO_ENCODING_FLAC: _ClassVar[AudioEncoding]

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_LOADED: _ClassVar[ModelState]
IMAGE_ENCODING_UNSPECIFIED: ImageEncoding
IMAGE_ENCODING_JPEG: ImageEncoding
IMAGE_ENCODING_PNG: ImageEncoding
IMAGE_ENCODING_RAW_RGB8: ImageEncoding
IMAGE_ENCODING_RAW_GRAY8: ImageEncoding
AUDIO_ENCODING_UNSPECIFIED: AudioEncoding
AUDIO_ENCODING_PCM16: AudioEncoding
AUDIO_ENCODING_WAV: AudioEncoding
AUDIO_ENCODING_FLAC: AudioEncoding
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_LOADED: ModelState

class Image(_message.Message):
    __slots__ = ("data", "encoding", "width", "height")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    encoding: ImageEncoding
    width: int
    height: int
    def __init__(self, data: _Optional[bytes] = ..., encoding: _Optional[_Union[ImageEncoding, str]] = ..., width: _Optional[int] = ..., height: _Optional[int] = ...) -> None: ...

class Audio(_message.Message):
    __slots__ = ("data", "encoding", "sample_rate", "channels")
    DATA_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    data: bytes
    encoding: AudioEncoding
    sample_rate: int
    channels: int
    def __init__(self, data: _Optional[bytes] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class InspectRequest(_message.Message):
    __slots__ = ("model", "version", "image", "frames", "reference_image", "text", "audio", "include_heatmap", "include_embedding")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    FRAMES_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    image: Image
    frames: _containers.RepeatedCompositeFieldContainer[Image]
    reference_image: Image
    text: str
    audio: Audio
    include_heatmap: bool
    include_embedding: bool
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., frames: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., reference_image: _Optional[_Union[Image, _Mapping]] = ..., text: _Optional[str] = ..., audio: _Optional[_Union[Audio, _Mapping]] = ..., include_heatmap: _Optional[bool] = ..., include_embedding: _Optional[bool] = ...) -> None: ...

class StreamOptions(_message.Message):
    __slots__ = ("max_pending_frames", "smoothing_window", "smoothing_min_count", "include_heatmap", "heatmap_max_side")
    MAX_PENDING_FRAMES_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SMOOTHING_MIN_COUNT_FIELD_NUMBER: _ClassVar[int]
    INCLUDE_HEATMAP_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_MAX_SIDE_FIELD_NUMBER: _ClassVar[int]
    max_pending_frames: int
    smoothing_window: int
    smoothing_min_count: int
    include_heatmap: bool
    heatmap_max_side: int
    def __init__(self, max_pending_frames: _Optional[int] = ..., smoothing_window: _Optional[int] = ..., smoothing_min_count: _Optional[int] = ..., include_heatmap: _Optional[bool] = ..., heatmap_max_side: _Optional[int] = ...) -> None: ...

class Frame(_message.Message):
    __slots__ = ("stream_id", "sequence_number", "capture_time", "image", "model", "version", "text", "options", "reference_image")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_IMAGE_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence_number: int
    capture_time: _timestamp_pb2.Timestamp
    image: Image
    model: str
    version: str
    text: str
    options: StreamOptions
    reference_image: Image
    def __init__(self, stream_id: _Optional[str] = ..., sequence_number: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., image: _Optional[_Union[Image, _Mapping]] = ..., model: _Optional[str] = ..., version: _Optional[str] = ..., text: _Optional[str] = ..., options: _Optional[_Union[StreamOptions, _Mapping]] = ..., reference_image: _Optional[_Union[Image, _Mapping]] = ...) -> None: ...

class AudioChunk(_message.Message):
    __slots__ = ("model", "version", "encoding", "sample_rate", "channels", "data", "text")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    encoding: AudioEncoding
    sample_rate: int
    channels: int
    data: bytes
    text: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ..., data: _Optional[bytes] = ..., text: _Optional[str] = ...) -> None: ...

class CallConfig(_message.Message):
    __slots__ = ("model", "version", "encoding", "sample_rate", "channels")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ENCODING_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_RATE_FIELD_NUMBER: _ClassVar[int]
    CHANNELS_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    encoding: AudioEncoding
    sample_rate: int
    channels: int
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., encoding: _Optional[_Union[AudioEncoding, str]] = ..., sample_rate: _Optional[int] = ..., channels: _Optional[int] = ...) -> None: ...

class CallRequest(_message.Message):
    __slots__ = ("config", "audio")
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    AUDIO_FIELD_NUMBER: _ClassVar[int]
    config: CallConfig
    audio: bytes
    def __init__(self, config: _Optional[_Union[CallConfig, _Mapping]] = ..., audio: _Optional[bytes] = ...) -> None: ...

class ReportRequest(_message.Message):
    __slots__ = ("model", "version", "images", "text")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: str
    images: _containers.RepeatedCompositeFieldContainer[Image]
    text: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[str] = ..., images: _Optional[_Iterable[_Union[Image, _Mapping]]] = ..., text: _Optional[str] = ...) -> None: ...

class Box(_message.Message):
    __slots__ = ("x1", "y1", "x2", "y2", "label", "score")
    X1_FIELD_NUMBER: _ClassVar[int]
    Y1_FIELD_NUMBER: _ClassVar[int]
    X2_FIELD_NUMBER: _ClassVar[int]
    Y2_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    x1: float
    y1: float
    x2: float
    y2: float
    label: str
    score: float
    def __init__(self, x1: _Optional[float] = ..., y1: _Optional[float] = ..., x2: _Optional[float] = ..., y2: _Optional[float] = ..., label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("decode_ms", "compute_ms", "queue_ms", "total_ms")
    DECODE_MS_FIELD_NUMBER: _ClassVar[int]
    COMPUTE_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    decode_ms: float
    compute_ms: float
    queue_ms: float
    total_ms: float
    def __init__(self, decode_ms: _Optional[float] = ..., compute_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Word(_message.Message):
    __slots__ = ("word", "start", "end", "probability")
    WORD_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    word: str
    start: float
    end: float
    probability: float
    def __init__(self, word: _Optional[str] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., probability: _Optional[float] = ...) -> None: ...

class Transcript(_message.Message):
    __slots__ = ("text", "language", "words")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    text: str
    language: str
    words: _containers.RepeatedCompositeFieldContainer[Word]
    def __init__(self, text: _Optional[str] = ..., language: _Optional[str] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ...) -> None: ...

class HeadResult(_message.Message):
    __slots__ = ("kind", "label", "score", "scores", "flags", "embedding", "boxes", "heatmap_png", "extra")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    EXTRA_FIELD_NUMBER: _ClassVar[int]
    kind: str
    label: str
    score: float
    scores: _containers.ScalarMap[str, float]
    flags: _containers.RepeatedScalarFieldContainer[str]
    embedding: _containers.RepeatedScalarFieldContainer[float]
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    heatmap_png: bytes
    extra: _struct_pb2.Struct
    def __init__(self, kind: _Optional[str] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., flags: _Optional[_Iterable[str]] = ..., embedding: _Optional[_Iterable[float]] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., heatmap_png: _Optional[bytes] = ..., extra: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class InspectionResult(_message.Message):
    __slots__ = ("model", "model_version", "modalities", "verdict", "verdict_score", "scores", "flags", "boxes", "heatmap_png", "heads", "transcript", "timings")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    class HeadsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeadResult
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeadResult, _Mapping]] = ...) -> None: ...
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    VERDICT_FIELD_NUMBER: _ClassVar[int]
    VERDICT_SCORE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    BOXES_FIELD_NUMBER: _ClassVar[int]
    HEATMAP_PNG_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    TRANSCRIPT_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    model: str
    model_version: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    verdict: str
    verdict_score: float
    scores: _containers.ScalarMap[str, float]
    flags: _containers.RepeatedScalarFieldContainer[str]
    boxes: _containers.RepeatedCompositeFieldContainer[Box]
    heatmap_png: bytes
    heads: _containers.MessageMap[str, HeadResult]
    transcript: Transcript
    timings: Timings
    def __init__(self, model: _Optional[str] = ..., model_version: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., verdict: _Optional[str] = ..., verdict_score: _Optional[float] = ..., scores: _Optional[_Mapping[str, float]] = ..., flags: _Optional[_Iterable[str]] = ..., boxes: _Optional[_Iterable[_Union[Box, _Mapping]]] = ..., heatmap_png: _Optional[bytes] = ..., heads: _Optional[_Mapping[str, HeadResult]] = ..., transcript: _Optional[_Union[Transcript, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ...) -> None: ...

class FrameError(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: str
    message: str
    def __init__(self, code: _Optional[str] = ..., message: _Optional[str] = ...) -> None: ...

class FrameResult(_message.Message):
    __slots__ = ("stream_id", "sequence_number", "capture_time", "result", "error", "skipped_sequence_numbers", "smoothed_verdict")
    STREAM_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_NUMBER_FIELD_NUMBER: _ClassVar[int]
    CAPTURE_TIME_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SKIPPED_SEQUENCE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    SMOOTHED_VERDICT_FIELD_NUMBER: _ClassVar[int]
    stream_id: str
    sequence_number: int
    capture_time: _timestamp_pb2.Timestamp
    result: InspectionResult
    error: FrameError
    skipped_sequence_numbers: _containers.RepeatedScalarFieldContainer[int]
    smoothed_verdict: str
    def __init__(self, stream_id: _Optional[str] = ..., sequence_number: _Optional[int] = ..., capture_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., result: _Optional[_Union[InspectionResult, _Mapping]] = ..., error: _Optional[_Union[FrameError, _Mapping]] = ..., skipped_sequence_numbers: _Optional[_Iterable[int]] = ..., smoothed_verdict: _Optional[str] = ...) -> None: ...

class CallSegment(_message.Message):
    __slots__ = ("speaker", "channel", "start", "end", "text", "language", "words", "labels", "flags")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: HeadResult
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[HeadResult, _Mapping]] = ...) -> None: ...
    SPEAKER_FIELD_NUMBER: _ClassVar[int]
    CHANNEL_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    WORDS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    speaker: str
    channel: int
    start: float
    end: float
    text: str
    language: str
    words: _containers.RepeatedCompositeFieldContainer[Word]
    labels: _containers.MessageMap[str, HeadResult]
    flags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, speaker: _Optional[str] = ..., channel: _Optional[int] = ..., start: _Optional[float] = ..., end: _Optional[float] = ..., text: _Optional[str] = ..., language: _Optional[str] = ..., words: _Optional[_Iterable[_Union[Word, _Mapping]]] = ..., labels: _Optional[_Mapping[str, HeadResult]] = ..., flags: _Optional[_Iterable[str]] = ...) -> None: ...

class CallUpdate(_message.Message):
    __slots__ = ("segment", "summary", "received_seconds")
    SEGMENT_FIELD_NUMBER: _ClassVar[int]
    SUMMARY_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_SECONDS_FIELD_NUMBER: _ClassVar[int]
    segment: CallSegment
    summary: InspectionResult
    received_seconds: float
    def __init__(self, segment: _Optional[_Union[CallSegment, _Mapping]] = ..., summary: _Optional[_Union[InspectionResult, _Mapping]] = ..., received_seconds: _Optional[float] = ...) -> None: ...

class ReportChunk(_message.Message):
    __slots__ = ("text", "fields", "final")
    class FieldsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    TEXT_FIELD_NUMBER: _ClassVar[int]
    FIELDS_FIELD_NUMBER: _ClassVar[int]
    FINAL_FIELD_NUMBER: _ClassVar[int]
    text: str
    fields: _containers.ScalarMap[str, str]
    final: bool
    def __init__(self, text: _Optional[str] = ..., fields: _Optional[_Mapping[str, str]] = ..., final: _Optional[bool] = ...) -> None: ...

class HeadInfo(_message.Message):
    __slots__ = ("name", "kind", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "state", "description", "modalities", "heads", "backend")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    MODALITIES_FIELD_NUMBER: _ClassVar[int]
    HEADS_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    state: ModelState
    description: str
    modalities: _containers.RepeatedScalarFieldContainer[str]
    heads: _containers.RepeatedCompositeFieldContainer[HeadInfo]
    backend: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., description: _Optional[str] = ..., modalities: _Optional[_Iterable[str]] = ..., heads: _Optional[_Iterable[_Union[HeadInfo, _Mapping]]] = ..., backend: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("include_available",)
    INCLUDE_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    include_available: bool
    def __init__(self, include_available: _Optional[bool] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("name", "backend")
    NAME_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    name: str
    backend: str
    def __init__(self, name: _Optional[str] = ..., backend: _Optional[str] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...
