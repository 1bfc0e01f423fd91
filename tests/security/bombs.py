"""Decompression bombs and long audio for the resource tests: tiny files that declare huge images or long audio."""

from __future__ import annotations

import io
import struct
import zlib

import cv2
import numpy as np

BOMB_SIDE = 20_000  # 400 MP: 1.2 GB as RGB, over six times the 64 MP limit
WEBP_SIDE = 16_383  # the largest a VP8/VP8L header can declare: 268 MP


def png(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose IHDR (with a valid CRC) declares width x height."""
    data = bytearray(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    return bytes(data)


def jpeg(width: int, height: int, fill: int = 3, progressive: bool = False) -> bytes:
    """A real 8x8 JPEG whose frame header declares width x height, with `fill` legal 0xFF bytes before it."""
    options = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if progressive else []
    data = bytearray(cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8), options)[1].tobytes())
    frame = next(i for i in range(2, len(data) - 1) if data[i] == 0xFF and data[i + 1] in (0xC0, 0xC2))
    data[frame + 5 : frame + 9] = struct.pack(">HH", height, width)
    return bytes(data[:frame] + b"\xff" * fill + data[frame:])


def bmp(width: int, height: int) -> bytes:
    """A 24-bit BMP header declaring width x height, followed by 64 bytes of pixels."""
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    pixels = b"\0" * 64
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + len(pixels), 0, 0, 14 + len(info)) + info + pixels


def tiff(width: int, height: int) -> bytes:
    """An uncompressed 8-bit grey little-endian TIFF declaring width x height, with 64 bytes of pixels."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1)]
    entries += [(273, 4, 0), (277, 3, 1), (278, 4, height), (279, 4, 64)]
    pixels_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, kind, value in entries:
        value = pixels_at if tag == 273 else value
        packed = struct.pack("<I", value) if kind == 4 else struct.pack("<HH", value, 0)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0) + b"\0" * 64


def webp_lossless(width: int, height: int) -> bytes:
    """A real 8x8 lossless WebP (VP8L) whose header declares width x height."""
    data = bytearray(cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 101])[1])
    bits = struct.unpack("<I", data[21:25])[0]
    data[21:25] = struct.pack("<I", (bits & ~0xFFFFFFF) | (width - 1) | ((height - 1) << 14))
    return bytes(data)


def webp_lossy(width: int, height: int) -> bytes:
    """A real 8x8 lossy WebP (VP8) whose frame header declares width x height."""
    data = bytearray(cv2.imencode(".webp", np.zeros((8, 8, 3), np.uint8), [cv2.IMWRITE_WEBP_QUALITY, 50])[1])
    start = data.index(b"\x9d\x01\x2a")
    data[start + 3 : start + 7] = struct.pack("<HH", width, height)
    return bytes(data)


def webp_extended(width: int, height: int) -> bytes:
    """An extended WebP (VP8X) whose canvas is width x height, around a real 8x8 lossless image."""
    simple = webp_lossless(8, 8)
    canvas = b"\0" * 4 + (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")  # flags, reserved
    chunks = b"VP8X" + struct.pack("<I", len(canvas)) + canvas + simple[12:]
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WEBP" + chunks


def gif(width: int, height: int) -> bytes:
    """A real 8x8 GIF whose logical screen declares width x height."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, "GIF")
    data = bytearray(buffer.getvalue())
    data[6:10] = struct.pack("<HH", width, height)
    return bytes(data)


IMAGE_BOMBS = {  # name: (the side it declares, the bytes)
    "png": (BOMB_SIDE, png(BOMB_SIDE, BOMB_SIDE)),
    "jpeg-fill-bytes": (BOMB_SIDE, jpeg(BOMB_SIDE, BOMB_SIDE)),
    "jpeg-progressive": (BOMB_SIDE, jpeg(BOMB_SIDE, BOMB_SIDE, fill=1, progressive=True)),
    "bmp": (BOMB_SIDE, bmp(BOMB_SIDE, BOMB_SIDE)),
    "bmp-top-down": (BOMB_SIDE, bmp(BOMB_SIDE, -BOMB_SIDE)),
    "tiff": (BOMB_SIDE, tiff(BOMB_SIDE, BOMB_SIDE)),
    "webp-lossless": (WEBP_SIDE, webp_lossless(WEBP_SIDE, WEBP_SIDE)),
    "webp-lossy": (WEBP_SIDE, webp_lossy(WEBP_SIDE, WEBP_SIDE)),
    "webp-extended": (BOMB_SIDE, webp_extended(BOMB_SIDE, BOMB_SIDE)),
    "gif": (BOMB_SIDE, gif(BOMB_SIDE, BOMB_SIDE)),
}


def silent_audio(seconds: int, format: str, subtype: str, rate: int = 16_000) -> bytes:
    """`seconds` of silence encoded by libsndfile (FLAC, OGG/Vorbis, WAV), written a second at a time."""
    import soundfile

    buffer = io.BytesIO()
    block = np.zeros((rate, 1), np.float32)
    with soundfile.SoundFile(buffer, "w", rate, 1, subtype, format=format) as sound:
        for _ in range(seconds):
            sound.write(block)
    return buffer.getvalue()


def flac_claiming(data: bytes, samples: int) -> bytes:
    """A FLAC whose STREAMINFO claims `samples` samples in all, whatever it holds (a lying header)."""
    out = bytearray(data)
    out[21] = (out[21] & 0xF0) | ((samples >> 32) & 0x0F)  # total samples: 36 bits from the low nibble of byte 21
    out[22:26] = struct.pack(">I", samples & 0xFFFFFFFF)
    return bytes(out)
