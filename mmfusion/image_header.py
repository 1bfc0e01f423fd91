"""Read an encoded image's format and size from its header, without decoding (or allocating) any pixel."""

from __future__ import annotations

import struct
from typing import NamedTuple

from mmfusion.types import InputError

FORMATS = "PNG, JPEG, GIF, BMP, TIFF or WebP"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Start-of-frame markers (baseline, extended, progressive, lossless, arithmetic); C4, C8 and CC are not frames.
JPEG_FRAMES = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
JPEG_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}  # RSTn and TEM carry no length
JPEG_END = frozenset({0xD9, 0xDA})  # EOI or start of scan before any frame header: no size to read
TIFF_WIDTH, TIFF_HEIGHT = 256, 257
TIFF_SHORT, TIFF_LONG = 3, 4


class ImageHeader(NamedTuple):
    """An encoded image's format name and its size in pixels, read from the header."""

    format: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _png(data: bytes) -> tuple[int, int] | None:
    if len(data) < 24 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def _jpeg(data: bytes) -> tuple[int, int] | None:
    """Walk the markers as libjpeg does: junk before a marker and 0xFF fill bytes are skipped, FF00 is data."""
    offset = 2
    while True:
        offset = data.find(b"\xff", offset)
        if offset < 0:
            return None
        while offset < len(data) and data[offset] == 0xFF:
            offset += 1
        if offset >= len(data):
            return None
        marker = data[offset]
        offset += 1
        if marker == 0x00 or marker in JPEG_STANDALONE:
            continue
        if marker in JPEG_END or offset + 2 > len(data):
            return None
        length = struct.unpack(">H", data[offset : offset + 2])[0]
        if marker in JPEG_FRAMES:
            if length < 8 or offset + 7 > len(data):
                return None
            height, width = struct.unpack(">HH", data[offset + 3 : offset + 7])
            return width, height
        if length < 2:
            return None
        offset += length


def _gif(data: bytes) -> tuple[int, int] | None:
    if len(data) < 10:
        return None
    width, height = struct.unpack("<HH", data[6:10])  # the logical screen: the canvas a decoder allocates
    return width, height


def _bmp(data: bytes) -> tuple[int, int] | None:
    if len(data) < 26:
        return None
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER: unsigned 16-bit sizes
        width, height = struct.unpack("<HH", data[18:22])
        return width, height
    if header_size < 40:
        return None
    width, height = struct.unpack("<ii", data[18:26])
    if width < 0:
        return None
    return width, abs(height)  # a negative height is a top-down bitmap


def _tiff(data: bytes) -> tuple[int, int] | None:
    """The first directory's ImageWidth and ImageLength (the page a decoder reads); the first of duplicates wins."""
    order = "<" if data[:2] == b"II" else ">"
    if len(data) < 8:
        return None
    offset = struct.unpack(order + "I", data[4:8])[0]
    if offset + 2 > len(data):
        return None
    count = struct.unpack(order + "H", data[offset : offset + 2])[0]
    found: dict[int, int] = {}
    for entry in range(offset + 2, min(offset + 2 + 12 * count, len(data) - 11), 12):
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (TIFF_WIDTH, TIFF_HEIGHT) and tag not in found:
            if kind == TIFF_SHORT:
                found[tag] = struct.unpack(order + "H", data[entry + 8 : entry + 10])[0]
            elif kind == TIFF_LONG:
                found[tag] = struct.unpack(order + "I", data[entry + 8 : entry + 12])[0]
            else:
                return None
    if TIFF_WIDTH not in found or TIFF_HEIGHT not in found:
        return None
    return found[TIFF_WIDTH], found[TIFF_HEIGHT]


def _webp(data: bytes) -> tuple[int, int] | None:
    """The canvas of VP8X (extended), or the frame size of a simple VP8L (lossless) or VP8 (lossy) file."""
    chunk = data[12:16]
    if chunk == b"VP8X" and len(data) >= 30:
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    if chunk == b"VP8L" and len(data) >= 25 and data[20] == 0x2F:
        bits = struct.unpack("<I", data[21:25])[0]
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8 " and len(data) >= 30 and data[23:26] == b"\x9d\x01\x2a":
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    return None


def _format(data: bytes) -> str | None:
    if data[:8] == PNG_SIGNATURE:
        return "PNG"
    if data[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "GIF"
    if data[:2] == b"BM":
        return "BMP"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "TIFF"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "WebP"
    return None


READERS = {"PNG": _png, "JPEG": _jpeg, "GIF": _gif, "BMP": _bmp, "TIFF": _tiff, "WebP": _webp}


def read_image_header(data: bytes, name: str = "image") -> ImageHeader:
    """The format and size an encoded image declares; an unknown format or an unreadable size is an InputError."""
    kind = _format(data)
    if kind is None:
        raise InputError(f"{name}: {len(data)} bytes are not a decodable image; expected {FORMATS}")
    size = READERS[kind](data)
    if size is None:
        raise InputError(f"{name}: {len(data)} bytes are not a decodable image; its {kind} header gives no size")
    return ImageHeader(kind, *size)
