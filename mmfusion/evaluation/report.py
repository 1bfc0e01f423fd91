"""OUTDIR/report.html: metrics, ROC and PR curves, confusion matrix and the worst misses with heatmaps."""

from __future__ import annotations

import base64
import html
import io
import json
from pathlib import Path
from typing import Any

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.metrics import precision_recall_curve, roc_curve  # noqa: E402

from mmfusion.evaluation.anomaly import Scored, confusion  # noqa: E402
from mmfusion.heads.patchcore.localisation import overlay  # noqa: E402

REPORT_FILE = "report.html"
WORST_SHOWN = 6
THUMBNAIL_SIDE = 320


def _figure_png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def curves_png(scored: list[Scored]) -> str | None:
    """ROC and precision-recall curves of the image scores, side by side; None when one class is missing."""
    truth = np.asarray([s.truth_defective for s in scored])
    scores = np.asarray([s.score for s in scored])
    if truth.all() or not truth.any():
        return None
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(9, 4))
    false_pos, true_pos, _ = roc_curve(truth, scores)
    roc_axes.plot(false_pos, true_pos)
    roc_axes.plot([0, 1], [0, 1], linestyle=":", color="grey")
    roc_axes.set(title="ROC (image level)", xlabel="false-detection rate", ylabel="detection rate")
    precision, recall, _ = precision_recall_curve(truth, scores)
    pr_axes.plot(recall, precision)
    pr_axes.set(title="Precision-recall (image level)", xlabel="recall", ylabel="precision", ylim=(0, 1.02))
    return _figure_png(figure)


def confusion_png(scored: list[Scored]) -> str:
    """The confusion matrix (manifest labels x predicted labels) as an annotated image."""
    true_labels, predicted_labels, counts = confusion(scored)
    figure, axes = plt.subplots(figsize=(1.2 + 1.1 * len(predicted_labels), 1.0 + 0.6 * len(true_labels)))
    axes.imshow(counts, cmap="Blues")
    axes.set_xticks(range(len(predicted_labels)), predicted_labels)
    axes.set_yticks(range(len(true_labels)), true_labels)
    axes.set(xlabel="predicted", ylabel="true", title="Confusion matrix")
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if count > counts.max() / 2 else "black"
        axes.text(column, row, str(count), ha="center", va="center", color=colour)
    return _figure_png(figure)


def _thumbnail(item: Scored) -> str:
    image = item.row.read_image()
    height, width = image.shape[:2]
    heat = np.zeros((height, width), np.float32)
    if item.anomaly_map is not None:
        heat = cv2.resize(np.asarray(item.anomaly_map, np.float32), (width, height), interpolation=cv2.INTER_LINEAR)
    boxes = [{"x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "label": b.type, "score": b.score} for b in item.boxes]
    picture = overlay(image, heat, boxes)
    for box in item.row.read_boxes():  # ground truth in green
        cv2.rectangle(picture, (int(box.x1), int(box.y1)), (int(box.x2) - 1, int(box.y2) - 1), (0, 255, 0), 1)
    scale = THUMBNAIL_SIDE / max(height, width)
    if scale < 1:
        picture = cv2.resize(picture, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    ok, png = cv2.imencode(".png", cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
    return base64.b64encode(png.tobytes()).decode("ascii") if ok else ""


def worst(scored: list[Scored]) -> tuple[list[Scored], list[Scored]]:
    """(defective rows with the lowest scores, good rows with the highest scores), WORST_SHOWN of each."""
    defective = sorted((s for s in scored if s.truth_defective), key=lambda s: s.score)
    good = sorted((s for s in scored if not s.truth_defective), key=lambda s: -s.score)
    return defective[:WORST_SHOWN], good[:WORST_SHOWN]


def verdict(item: Scored) -> str:
    """'missed' (a defective part passed as good), 'false detection' (a good part flagged defective) or 'correct'."""
    if item.truth_defective and not item.predicted_defective:
        return "missed"
    if item.predicted_defective and not item.truth_defective:
        return "false detection"
    return "correct"


def _gallery(title: str, items: list[Scored]) -> str:
    if not items:
        return ""
    cells = []
    for item in items:
        caption = html.escape(f"{item.row.image.name}: true {item.row.label}, predicted {item.label or 'good'} "
                              f"({verdict(item)}), score {item.score:.3g}")  # fmt: skip
        cells.append(
            f'<figure><img src="data:image/png;base64,{_thumbnail(item)}"><figcaption>{caption}</figcaption></figure>'
        )
    return f"<h3>{html.escape(title)}</h3><div class='gallery'>{''.join(cells)}</div>"


def _metrics_table(summary: dict[str, Any]) -> str:
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = f"<pre>{html.escape(json.dumps(value, indent=1, default=float))}</pre>"
        elif isinstance(value, float):
            value = f"{value:.4f}"
        else:
            value = html.escape(str(value))
        rows.append(f"<tr><th>{html.escape(key)}</th><td>{value}</td></tr>")
    return f"<table>{''.join(rows)}</table>"


STYLE = """body{font-family:sans-serif;margin:2em;max-width:1200px} table{border-collapse:collapse}
th,td{border:1px solid #ccc;padding:4px 8px;text-align:left;vertical-align:top} pre{margin:0;font-size:11px}
.gallery{display:flex;flex-wrap:wrap;gap:12px} figure{margin:0;width:330px} figcaption{font-size:12px}"""


def write_report(folder: str | Path, summary: dict[str, Any], scored: dict[str, list[Scored]]) -> Path:
    """Write folder/report.html (images embedded) for the summary and the scored rows of each head."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    parts = [f"<h1>Evaluation of {html.escape(str(summary.get('model', '')))}</h1>", _metrics_table(summary)]
    for head_name, items in scored.items():
        parts.append(f"<h2>Head {html.escape(head_name)}</h2>")
        curves = curves_png(items)
        if curves:
            parts.append(f'<h3>ROC and precision-recall curves</h3><img src="data:image/png;base64,{curves}">')
        parts.append(f'<h3>Confusion matrix</h3><img src="data:image/png;base64,{confusion_png(items)}">')
        missed, false_alarms = worst(items)
        parts.append(_gallery("Defective parts with the lowest scores (misses first)", missed))
        parts.append(_gallery("Good parts with the highest scores (false detections first)", false_alarms))
    path = folder / REPORT_FILE
    path.write_text(
        f"<!doctype html><html><head><meta charset='utf-8'><title>mmfusion evaluation</title>"
        f"<style>{STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )
    return path
