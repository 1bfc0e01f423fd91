"""Media decoding: bad bytes and bad arrays give one-line errors naming the problem."""

import cv2
import numpy as np
import pytest

from mmfusion.media import area_resize, check_audio, check_image, decode_audio, decode_image, resize_normalize
from mmfusion.types import InputError


def test_decode_png_round_trip(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    assert ok
    np.testing.assert_array_equal(decode_image(encoded.tobytes()), image)
    path = tmp_path / "x.png"
    path.write_bytes(encoded.tobytes())
    np.testing.assert_array_equal(decode_image(path), image)


def test_grayscale_becomes_rgb():
    gray = np.full((5, 6), 7, np.uint8)
    assert check_image(gray).shape == (5, 6, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [(b"", "empty bytes"), (b"\x89PNG\r\n\x1a\nnot really", "not a decodable image"), (b"hello", "not a decodable")],
)
def test_corrupt_image_bytes(data, message):
    with pytest.raises(InputError, match=message) as error:
        decode_image(data)
    assert "\n" not in str(error.value)


def test_four_channel_image_rejected():
    with pytest.raises(InputError, match=r"image 6x5x4: expected 1 or 3 channels"):
        check_image(np.zeros((5, 6, 4), np.uint8))


def test_encoded_rgba_png_rejected():
    ok, encoded = cv2.imencode(".png", np.zeros((4, 4, 4), np.uint8))
    with pytest.raises(InputError, match="expected 1 or 3 channels"):
        decode_image(encoded.tobytes())


def test_zero_pixel_image_rejected():
    with pytest.raises(InputError, match="image 0x5: image has no pixels"):
        check_image(np.zeros((5, 0, 3), np.uint8))


def test_missing_file_named(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        decode_image(tmp_path / "nope.jpg")


def test_resize_normalize_shape_and_values():
    image = np.full((10, 20, 3), 255, np.uint8)
    array = resize_normalize(image, (8, 16), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert array.shape == (3, 8, 16) and array.dtype == np.float32
    np.testing.assert_allclose(array, 1.0)


def test_area_resize_halves_first_and_stays_close_to_one_area_resize():
    rng = np.random.default_rng(0)
    board = cv2.GaussianBlur(rng.integers(0, 256, (640, 480, 3), dtype=np.uint8), (0, 0), 2.0)  # (H, W, 3)
    direct = cv2.resize(board, (192, 256), interpolation=cv2.INTER_AREA).astype(np.float32)  # 2.5x smaller
    halved = area_resize(board, 192, 256)
    assert halved.shape == (256, 192, 3) and halved.dtype == np.uint8
    assert np.abs(halved - direct).mean() < 1.0  # grey levels, out of 255
    small = board[:300, :400]  # under 2x: one INTER_AREA, unchanged
    expected = cv2.resize(small, (256, 192), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(area_resize(small, 256, 192), expected)


@pytest.mark.parametrize("std", [(0.5, 0.5, 0.5), (0.229, 0.224, 0.225)])  # one scale, and one per channel
def test_resize_normalize_equals_the_plain_formula(std):
    image = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    mean = (0.485, 0.456, 0.406)
    for size in [(37, 53), (20, 30)]:  # kept, and shrunk with INTER_AREA
        resized = image if size == (37, 53) else cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
        expected = ((resized / 255.0 - np.asarray(mean)) / np.asarray(std)).transpose(2, 0, 1)
        array = resize_normalize(image, size, mean, std)
        assert array.shape == (3, *size) and array.dtype == np.float32 and array.flags.c_contiguous
        np.testing.assert_allclose(array, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("data", "message"), [(b"", "empty bytes"), (b"RIFF1234WAVEjunk" * 4, "not decodable audio")])
def test_bad_audio_bytes(data, message):
    with pytest.raises(InputError, match=message):
        decode_audio(data)


def test_wav_round_trip(tmp_path, samples):
    waveform = decode_audio(next(samples.glob("*.wav")))
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    assert 3 * 16000 < waveform.size < 8 * 16000
    assert 0.01 < np.abs(waveform).max() <= 1.0


def test_check_audio_rejects_stereo_and_empty():
    with pytest.raises(InputError, match="expected a 1-D mono waveform"):
        check_audio(np.zeros((2, 100), np.float32))
    with pytest.raises(InputError, match="waveform is empty"):
        check_audio(np.zeros(0, np.float32))
