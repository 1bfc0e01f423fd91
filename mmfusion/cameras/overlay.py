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
    """The server's 8-bit heatmap PNG as floats in [0, 1] at the frame's size; None without one."""
    if not png:
        return None
    heat = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_GRAYSCALE)
    if heat is None:
        return None
    heat = cv2.resize(heat, (width, height), interpolation=cv2.INTER_LINEAR)
    return heat.astype(np.float32) / 255.0  # (H, W)


def blend_heatmap(canvas: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """JET colours over the upper half of the map's range, opacity growing with the heat (BGR in and out)."""
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (np.clip((heat - 0.5) * 2.0, 0.0, 1.0) * HEAT_ALPHA)[..., None]  # (H, W, 1)
    return (canvas * (1.0 - weight) + colours * weight).astype(np.uint8)


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
