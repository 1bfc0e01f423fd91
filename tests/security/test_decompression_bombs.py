"""Decompression bombs: every image format's size is read from its header and checked before any pixel is
allocated; requests carry a bounded number of images; compressed audio is bounded before and while decoding."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import yaml

from mmfusion import media
from mmfusion.calls.decode import decode_call_audio
from mmfusion.image_header import read_image_header
from mmfusion.media import MAX_AUDIO_SECONDS, MAX_CLIP_SECONDS, MAX_IMAGE_PIXELS, decode_audio, decode_image
from mmfusion.proto import inspection_pb2 as pb
from mmfusion.serving.calls import max_call_seconds
from mmfusion.serving.convert import MAX_REQUEST_IMAGES, MAX_REQUEST_PIXELS, inputs_from_request
from mmfusion.types import InputError
from tests.security import bombs

REPO = Path(__file__).resolve().parents[2]


def _pillow(image: np.ndarray, format: str, **options) -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format, **options)
    return buffer.getvalue()


def _encodings(image: np.ndarray) -> dict[str, bytes]:
    """The same RGB image in every accepted format and the variants decoders meet in the wild."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    encoded = {
        "png": cv2.imencode(".png", bgr)[1],
        "jpeg": cv2.imencode(".jpg", bgr)[1],
        "jpeg-progressive": cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1],
        "bmp": cv2.imencode(".bmp", bgr)[1],
        "tiff": cv2.imencode(".tiff", bgr)[1],
        "webp-lossy": cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 60])[1],
        "webp-lossless": cv2.imencode(".webp", bgr, [cv2.IMWRITE_WEBP_QUALITY, 101])[1],
    }
    exif = b"Exif\0\0MM\0*\0\0\0\x08\0\0\0\0\0\0"
    encoded |= {
        "gif": _pillow(image, "GIF"),
        "pillow-bmp": _pillow(image, "BMP"),
        "tiff-deflate": _pillow(image, "TIFF", compression="tiff_deflate"),
        "tiff-lzw": _pillow(image, "TIFF", compression="tiff_lzw"),
        "jpeg-exif": _pillow(image, "JPEG", exif=exif),
        "webp-extended": _pillow(image, "WEBP", exif=exif),  # metadata makes it VP8X
    }
    return {name: bytes(data) for name, data in encoded.items()}


@pytest.mark.parametrize(("width", "height"), [(37, 23), (8, 300)])
def test_the_header_size_of_every_format_is_the_decoded_size(width, height):
    image = np.random.default_rng(width).integers(0, 255, (height, width, 3), np.uint8)
    for name, data in _encodings(image).items():
        header = read_image_header(data, name)
        assert (header.width, header.height) == (width, height), name
        assert decode_image(data, name).shape == (height, width, 3), name
    assert _encodings(image)["webp-extended"][12:16] == b"VP8X"


@pytest.mark.parametrize("kind", sorted(bombs.IMAGE_BOMBS))
def test_bombs_of_every_format_are_refused_before_opencv_sees_them(kind, monkeypatch):
    def no_decoding(*_):
        raise AssertionError("the bomb reached cv2.imdecode")

    monkeypatch.setattr(media.cv2, "imdecode", no_decoding)
    side, data = bombs.IMAGE_BOMBS[kind]
    with pytest.raises(InputError) as error:
        decode_image(data, "frames[3]")
    assert str(error.value).startswith(f"frames[3]: {side}x{side} pixels; expected at most {MAX_IMAGE_PIXELS} pixels")


def test_jpeg_fill_bytes_and_every_frame_marker_are_read():
    for marker in (0xC1, 0xC3, 0xC5, 0xC9, 0xCB, 0xCF):  # extended, lossless, hierarchical, arithmetic
        data = bytearray(bombs.jpeg(30_000, 30_000, fill=7))
        frame = data.index(b"\xff\xc0", 2)
        data[frame + 1] = marker
        assert read_image_header(bytes(data)).pixels == 900_000_000, hex(marker)
    junk_before_marker = bombs.jpeg(9000, 9000, fill=0).replace(b"\xff\xc4", b"\x00junk\xff\xff\xc4", 1)
    assert read_image_header(junk_before_marker).pixels == 81_000_000  # libjpeg skips junk; so does the reader


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"P6\n20000 20000\n255\n" + b"\0" * 64, r"are not a decodable image; expected PNG, JPEG, GIF, BMP, TIFF"),
        (b"\x59\xa6\x6a\x95" + b"\0" * 60, "are not a decodable image; expected"),  # Sun raster: OpenCV reads it
        (b"II+\0" + b"\0" * 60, "are not a decodable image; expected"),  # BigTIFF
        (b"\xff\xd8\xff\xe0\x00\x10JFIF\0\xff\xda\x00\x08", "its JPEG header gives no size"),  # scan before frame
        (b"RIFF\0\0\0\0WEBPVP8X", "its WebP header gives no size"),
        (b"MM\0*\0\0\0\x08\0\x01\x01\x00\x00\x02", "its TIFF header gives no size"),  # a width of type ASCII
    ],
)
def test_formats_whose_size_cannot_be_read_are_refused(data, message):
    with pytest.raises(InputError, match=message):
        decode_image(data)


def test_opencv_enforces_the_same_limit_behind_the_header_check():
    script = (
        "import mmfusion, cv2, numpy as np\n"
        "from mmfusion.media import MAX_IMAGE_PIXELS\n"
        "from tests.security.bombs import png\n"
        "import os; assert os.environ['OPENCV_IO_MAX_IMAGE_PIXELS'] == str(MAX_IMAGE_PIXELS)\n"
        "try:\n"
        "    cv2.imdecode(np.frombuffer(png(9000, 9000), np.uint8), cv2.IMREAD_UNCHANGED)\n"
        "except cv2.error:\n"
        "    print('refused by OpenCV')\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "refused by OpenCV", done.stderr[-2000:]


def _tiny_png() -> bytes:
    return cv2.imencode(".png", np.zeros((4, 4, 3), np.uint8))[1].tobytes()


def test_too_many_frames_are_refused_before_any_is_decoded(monkeypatch):
    monkeypatch.setattr(media.cv2, "imdecode", lambda *_: pytest.fail("a frame was decoded"))
    frames = [pb.Image(data=_tiny_png())] * (MAX_REQUEST_IMAGES + 1)
    with pytest.raises(InputError) as error:
        inputs_from_request(pb.InspectRequest(model="m", frames=frames, text="x"))
    assert str(error.value) == (
        f"image, reference_image and frames: {MAX_REQUEST_IMAGES + 1} images; "
        f"expected at most {MAX_REQUEST_IMAGES} in one request"
    )


def test_frames_too_large_together_are_refused_before_any_is_decoded(monkeypatch):
    monkeypatch.setattr(media.cv2, "imdecode", lambda *_: pytest.fail("a frame was decoded"))
    frame = pb.Image(data=bombs.png(8000, 8000))  # 64 MP each: every frame alone is allowed
    count = MAX_REQUEST_PIXELS // 64_000_000 + 1
    expected = rf"^image, reference_image and frames: {count + 1} images of {count * 64_000_000 + 16} pixels in all"
    with pytest.raises(InputError, match=expected):
        inputs_from_request(pb.InspectRequest(model="m", frames=[frame] * count, image=pb.Image(data=_tiny_png())))
    frames = [pb.Image(data=_tiny_png())] * 2 + [pb.Image(data=bombs.tiff(20_000, 20_000))]
    with pytest.raises(InputError, match=r"^frames\[2\]: 20000x20000 pixels; expected at most 64000000"):
        inputs_from_request(pb.InspectRequest(model="m", frames=frames))


@pytest.fixture(scope="module")
def long_flac() -> bytes:
    return bombs.silent_audio(MAX_CLIP_SECONDS + 300, "FLAC", "PCM_16")  # 600 s: ~30 KB


@pytest.fixture(scope="module")
def long_ogg() -> bytes:
    return bombs.silent_audio(MAX_CLIP_SECONDS + 300, "OGG", "VORBIS")


def test_long_compressed_clips_are_refused_from_the_header(long_flac, long_ogg):
    for data in (long_flac, long_ogg):
        with pytest.raises(InputError, match=r"^audio: the header declares 600\.0 s of audio; expected at most 300 s$"):
            decode_audio(data)
        with pytest.raises(InputError, match=r"^audio: the header declares 600\.0 s of audio; expected at most 60 s$"):
            decode_call_audio(data, max_seconds=60)


def test_a_header_that_understates_the_length_stops_decoding_at_the_limit():
    lying = bombs.flac_claiming(bombs.silent_audio(40, "FLAC", "PCM_16"), samples=16_000)  # claims 1 s, holds 40
    with pytest.raises(InputError, match=r"^audio: more than 20 s of audio decoded; expected at most 20 s$"):
        decode_audio(lying, max_seconds=20)
    with pytest.raises(InputError, match=r"^audio: more than 20 s of audio decoded; expected at most 20 s$"):
        decode_call_audio(lying, max_seconds=20)
    assert decode_audio(lying, max_seconds=60).size == 40 * 16_000


def test_call_models_are_held_to_their_own_max_seconds(tmp_path):
    (tmp_path / "call.yaml").write_text(yaml.safe_dump({"max_seconds": 90}))
    assert max_call_seconds(SimpleNamespace(model_dir=tmp_path)) == 90
    assert max_call_seconds(SimpleNamespace(model_dir=tmp_path / "none")) == MAX_AUDIO_SECONDS
