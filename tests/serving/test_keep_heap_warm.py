"""keep_heap_warm: a frame's large arrays come from the heap (no mapping per frame); it can be switched off."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from mmfusion.serving.memory import MALLINFO2, MALLOPT

pytestmark = pytest.mark.skipif(MALLOPT is None or MALLINFO2 is None, reason="needs glibc's mallopt and mallinfo2")

PROBE = """
import json, sys
import numpy as np
from mmfusion.serving.memory import MALLINFO2, keep_heap_warm
warm = keep_heap_warm()
mapped = []
for _ in range(3):
    before = MALLINFO2().hblkhd
    frame = np.ones((1024, 1024, 8), np.uint8)  # 8 MiB, a large decoded frame
    mapped.append(MALLINFO2().hblkhd - before)
    del frame
print(json.dumps({"warm": warm, "mapped": mapped}))
"""


def _probe(**environment: str) -> dict:
    result = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120, env={**os.environ, **environment}
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


def test_large_frames_come_from_the_heap_once_it_is_kept_warm():
    probe = _probe()
    assert probe["warm"] is True
    assert probe["mapped"] == [0, 0, 0]  # no block of its own mapped (and unmapped on free) per frame


def test_glibc_defaults_map_each_large_frame_and_the_switch_keeps_them():
    probe = _probe(MMFUSION_KEEP_HEAP="0")
    assert probe["warm"] is False
    assert probe["mapped"][0] >= 8 * 2**20  # the first 8 MiB block is a fresh mapping under glibc's defaults
