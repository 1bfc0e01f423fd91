"""video.frames: frame sampling from real video files, padding masks, temporal pooling, errors."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mmfusion.config import ConfigError, validate_params
from mmfusion.encoders.open_clip_model import EXAMPLE_MODEL
from mmfusion.encoders.video import VideoFramesEncoder, VideoParams, sample_frames, uniform_indices
from mmfusion.types import InputError

IMAGE_ENCODER = {"name": "image.open_clip", "params": {"model_name": EXAMPLE_MODEL}}
LEVEL_STEP = 20  # frame i is a flat grey of level 20 * i, recognisable through lossy codecs
HEIGHT, WIDTH = 48, 64


def write_video(path: Path, frames: list[np.ndarray], fourcc: str = "mp4v") -> Path:
    """Write RGB frames to a video file with OpenCV."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10.0, (WIDTH, HEIGHT))
    if not writer.isOpened():
        pytest.skip(f"OpenCV cannot write {fourcc!r} video here")
    for frame in frames:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    return path


def grey_frames(count: int) -> list[np.ndarray]:
    return [np.full((HEIGHT, WIDTH, 3), LEVEL_STEP * index, np.uint8) for index in range(count)]


def frame_numbers(frames: list[np.ndarray]) -> list[int]:
    """Which grey frame each decoded frame is."""
    return [int(round(frame.mean() / LEVEL_STEP)) for frame in frames]


def build(seed: int = 0, **params) -> VideoFramesEncoder:
    torch.manual_seed(seed)
    return VideoFramesEncoder(VideoParams(**{"image_encoder": IMAGE_ENCODER, **params}))


@pytest.fixture(scope="module")
def twelve_frame_video(tmp_path_factory) -> Path:
    return write_video(tmp_path_factory.mktemp("video") / "grey12.mp4", grey_frames(12))


@pytest.fixture(scope="module")
def encoder() -> VideoFramesEncoder:
    return build(max_frames=6)  # few frames keep the 224-pixel image encoder cheap


# --- sampling ----------------------------------------------------------------------------------


def test_uniform_indices():
    assert uniform_indices(12, 4) == [0, 4, 7, 11]
    assert uniform_indices(12, 1) == [0]
    assert uniform_indices(3, 5) == [0, 1, 2]


@pytest.mark.parametrize(
    ("sampling", "expected"),
    [
        ({}, list(range(12))),
        ({"every_n": 3}, [0, 3, 6, 9]),
        ({"every_n": 5, "max_frames": 2}, [0, 5]),
        ({"max_frames": 4}, [0, 1, 2, 3]),
        ({"num_frames": 4}, [0, 4, 7, 11]),
        ({"num_frames": 3}, [0, 6, 11]),
        ({"num_frames": 20, "max_frames": 20}, list(range(12))),
    ],
)
def test_sampling_from_file_and_list_pick_the_same_frames(twelve_frame_video, sampling, expected):
    params = VideoParams(image_encoder=IMAGE_ENCODER, **sampling)
    assert frame_numbers(sample_frames(str(twelve_frame_video), params)) == expected
    assert frame_numbers(sample_frames(grey_frames(12), params)) == expected


def test_num_frames_pads_a_short_video(twelve_frame_video):
    encoder = build(num_frames=16)
    arrays = encoder.preprocess([twelve_frame_video])
    assert arrays["frames"].shape == (1, 16, 3, 224, 224) and arrays["frames"].dtype == np.float32
    assert arrays["frame_mask"].tolist() == [[True] * 12 + [False] * 4]
    assert not arrays["frames"][0, 12:].any()


# --- batches, masks, pooling -------------------------------------------------------------------


@torch.no_grad()
def test_batch_of_two_lengths_is_padded_and_masked(encoder, twelve_frame_video):
    short = [np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8) for seed in range(3)]
    arrays = encoder.preprocess([twelve_frame_video, short])
    assert arrays["frames"].shape == (2, 6, 3, 224, 224)  # the file is cut at max_frames=6
    assert arrays["frame_mask"].sum(axis=1).tolist() == [6, 3]
    embedding = encoder(**{name: torch.from_numpy(value) for name, value in arrays.items()})
    assert embedding.tokens.shape == (2, 6, 256) and embedding.pooled.shape == (2, 256)
    assert torch.equal(embedding.mask, torch.from_numpy(arrays["frame_mask"]))
    assert not embedding.tokens[1, 3:].any()  # padded frames carry no embedding
    assert torch.allclose(embedding.pooled[1], embedding.tokens[1, :3].mean(dim=0), atol=1e-6)
    # Each frame token is the image encoder's pooled embedding of that frame, and batching changes nothing.
    alone = encoder.encode([short])
    assert torch.allclose(alone.pooled[0], embedding.pooled[1], atol=1e-5)
    image_pooled = encoder.image_encoder.encode(short).pooled  # (3, 256)
    assert torch.allclose(embedding.tokens[1, :3], image_pooled, atol=1e-5)


@torch.no_grad()
def test_attention_pooling_ignores_padding():
    encoder = build(pooling="attention", num_frames=4)
    frames = [np.random.default_rng(seed).integers(0, 256, (30, 40, 3), dtype=np.uint8) for seed in range(3)]
    arrays = {name: torch.from_numpy(value) for name, value in encoder.preprocess([frames]).items()}
    at_init = encoder(**arrays)
    assert at_init.tokens.shape == (1, 4, 256) and at_init.pooled.shape == (1, 256)
    # The query starts at zero, so attention starts as the masked mean.
    assert torch.allclose(at_init.pooled, at_init.tokens[0, :3].mean(dim=0, keepdim=True), atol=1e-6)
    torch.manual_seed(5)
    encoder.attention.query.normal_()
    trained = encoder(**arrays)
    assert not torch.allclose(trained.pooled, at_init.pooled, atol=1e-4)
    noisy = dict(arrays, frames=arrays["frames"].clone())
    noisy["frames"][0, 3] = torch.randn_like(noisy["frames"][0, 3])  # garbage in the padded slot
    assert torch.allclose(encoder(**noisy).pooled, trained.pooled, atol=1e-6)


def test_mean_and_attention_have_the_same_shapes(encoder):
    attention = build(pooling="attention")
    frames = [np.zeros((20, 20, 3), np.uint8)] * 2
    for video_encoder in (encoder, attention):
        embedding = video_encoder.encode([frames, frames[:1]])
        assert embedding.tokens.shape == (2, 2, 256) and embedding.pooled.shape == (2, 256)
        assert embedding.mask.tolist() == [[True, True], [True, False]]
    assert sum(p.numel() for p in attention.parameters()) > sum(p.numel() for p in encoder.parameters())


@torch.no_grad()
def test_list_of_frames_equals_the_same_frames_from_a_lossless_file(encoder, tmp_path):
    rng = np.random.default_rng(7)
    frames = [rng.integers(0, 256, (HEIGHT, WIDTH, 3), dtype=np.uint8) for _ in range(4)]
    path = write_video(tmp_path / "lossless.avi", frames, fourcc="png ")
    decoded = sample_frames(str(path), encoder.params)
    assert all(np.array_equal(a, b) for a, b in zip(decoded, frames, strict=True))
    from_file, from_list = encoder.encode([path]), encoder.encode([frames])
    assert torch.allclose(from_file.pooled, from_list.pooled, atol=1e-6)


@torch.no_grad()
def test_list_of_frames_matches_a_lossy_file_within_codec_loss(encoder, twelve_frame_video):
    from_file = encoder.encode([twelve_frame_video]).pooled
    from_list = encoder.encode([grey_frames(12)]).pooled  # both cut at max_frames=6
    assert torch.nn.functional.cosine_similarity(from_file, from_list).item() > 0.99


# --- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("sampling", [{}, {"num_frames": 3}])
def test_missing_or_non_video_file_raises_input_error(tmp_path, sampling):
    encoder = build(**sampling)
    with pytest.raises(InputError, match="does not exist"):
        encoder.preprocess([str(tmp_path / "absent.mp4")])
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("this is a text file, not a video")
    with pytest.raises(InputError, match="notes.mp4"):
        encoder.preprocess([not_video])


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ([], "video 0: empty list of frames"),
        (42, "video 0: expected a video file path or a list of RGB frames, got int"),
        ([np.zeros((8, 8, 3), np.float32)], "video 0 frame 0: expected uint8"),
    ],
)
def test_bad_frame_lists_raise_input_error(encoder, item, message):
    with pytest.raises(InputError, match=message):
        encoder.preprocess([item])


def test_every_n_and_num_frames_are_exclusive():
    with pytest.raises(ValidationError, match="every_n=2 and num_frames=4 both choose frames"):
        VideoParams(image_encoder=IMAGE_ENCODER, every_n=2, num_frames=4)
    with pytest.raises(ValidationError, match="num_frames=100 exceeds max_frames=64"):
        VideoParams(image_encoder=IMAGE_ENCODER, num_frames=100)


@pytest.mark.parametrize(
    ("image_encoder", "message"),
    [
        ({"name": "image.nope"}, "'image.nope' is not a registered encoder; image encoders: .*image.open_clip"),
        ({"name": "text.open_clip"}, "'text.open_clip' reads text, not image"),
        ({"name": "video.frames"}, "'video.frames' reads video, not image"),
        (
            {"name": "image.open_clip", "params": {"model_name": "ViT-Q-32"}},
            "params for image.open_clip: model_name: model_name 'ViT-Q-32' is not an open_clip model",
        ),
        ({"name": "image.open_clip", "params": {"colour": 1}}, "params for image.open_clip: colour: Extra inputs"),
    ],
)
def test_image_encoder_spec_is_validated(image_encoder, message):
    with pytest.raises(ValidationError, match=message):
        VideoParams(image_encoder=image_encoder)


def test_config_errors_name_the_nested_key(tmp_path):
    raw = {"image_encoder": {"name": "text.open_clip"}}
    with pytest.raises(ConfigError, match="config.yaml: encoders.video.params.image_encoder.name: 'text.open_clip'"):
        validate_params(VideoParams, raw, "config.yaml", ("encoders", "video", "params"), tmp_path)


def test_nested_checkpoint_path_resolves_from_model_folder(tmp_path):
    raw = {"image_encoder": {"name": "image.open_clip", "params": {"checkpoint": "weights/clip.pt"}}}
    params = validate_params(VideoParams, raw, "config.yaml", ("encoders", "video", "params"), tmp_path)
    assert params.image_encoder.params["checkpoint"] == str(tmp_path / "weights" / "clip.pt")
    assert params.image_encoder.params["model_name"] == "ViT-B-32"
