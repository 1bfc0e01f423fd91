"""Drawing a judged frame for people: heatmap blended in, boxes with their labels, a status bar; JPEG out."""

from __future__ import annotations

import cv2
import numpy as np

from mmfusion.cameras.stream import CameraResult

HEAT_ALPHA = 0.45  # at the hottest pixel; cooler ones blend in less, the coolest half not at all
DEFECT_BGR = (40, 40, 230)
PASS_BGR = (60, 170, 60)
BAR_HEIGHT = 30


def heatmap_from_png(png: bytes, height: int, width: int) -> np.ndarray | None:
    """The server's 8-bit heatmap PNG at the frame's size, uint8 (H, W) (255 = the map's maximum); None without one."""
    if not png:
        return None
    heat = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if heat is None:
        return None
    if heat.shape != (height, width):
        heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    return heat


def blend_heatmap(canvas: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """JET colours over the upper half of the map's range, opacity growing with the heat (BGR in and out).

    heat is uint8 (H, W); only the rows and columns holding heat above half are blended (most frames: few).
    """
    rows, cols = np.nonzero((heat > 127).any(1))[0], np.nonzero((heat > 127).any(0))[0]
    if not len(rows):
        return canvas
    region = np.s_[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
    hot = heat[region]
    colours = cv2.applyColorMap(hot, cv2.COLORMAP_JET)
    weight = np.clip((hot.astype(np.float32) - 127.5) * (2.0 * HEAT_ALPHA / 255.0), 0.0, HEAT_ALPHA)  # (h, w)
    blended = canvas.copy()
    blended[region] = cv2.blendLinear(canvas[region], colours, 1.0 - weight, weight)
    return blended


def draw(result: CameraResult, fps: float = 0.0) -> np.ndarray:
    """The frame as BGR with heatmap, boxes and a bar: camera, frame number, smoothed verdict, score, fps, latency."""
    canvas = cv2.cvtColor(result.image, cv2.COLOR_RGB2BGR)
    height, width = canvas.shape[:2]
    answer = result.answer.result
    heat = heatmap_from_png(answer.heatmap_png, height, width)
    if heat is not None:
        canvas = blend_heatmap(canvas, heat)
    defect = result.is_defect
    colour = DEFECT_BGR if defect else PASS_BGR
    thickness = max(2, round(min(height, width) / 320))
    for box in answer.boxes:
        x1, y1, x2, y2 = (int(round(v)) for v in (box.x1, box.y1, box.x2, box.y2))
        cv2.rectangle(canvas, (x1, y1), (x2, y2), DEFECT_BGR, thickness)
        label = f"{box.label} {box.score:.2f}" if box.label else f"{box.score:.2f}"
        cv2.putText(canvas, label, (x1, max(BAR_HEIGHT + 12, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, DEFECT_BGR, 1)
    status = result.answer.error.message if result.answer.HasField("error") else result.smoothed or "-"
    text = f"{result.camera} #{result.sequence_number} {status} {answer.verdict_score:.2f}"
    text += f"  {fps:.1f} fps  {result.latency_s * 1000:.0f} ms"
    cv2.rectangle(canvas, (0, 0), (width, BAR_HEIGHT), (255, 255, 255), -1)
    cv2.putText(canvas, text, (6, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.6, colour, 2, cv2.LINE_AA)
    return canvas


def to_jpeg(canvas_bgr: np.ndarray, quality: int = 80) -> bytes:
    ok, data = cv2.imencode(".jpg", canvas_bgr, [cv2.IMWRITE_JPEG_QUALITY, quality])
    return data.tobytes() if ok else b""
