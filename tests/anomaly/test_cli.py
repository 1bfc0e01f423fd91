"""`mmfusion fit | calibrate | eval` end to end on synthetic parts, and how they refuse bad input."""

from __future__ import annotations

import json
import shutil

import numpy as np

from mmfusion.cli.main import main
from mmfusion.evaluation.anomaly import evaluate
from mmfusion.security.integrity import verify_manifest

NAMED_KEYS = {"image_auroc", "pixel_auroc", "f1", "false_detection_rate", "miss_rate", "images_per_second", "per_class"}


def test_fit_writes_a_verifiable_fitted_folder(fitted, model_dir):
    assert {p.name for p in (fitted / "fitted" / "anomaly").iterdir()} == {
        "memory_bank.npy",
        "calibration.json",
        "meta.json",
    }
    verify_manifest(fitted)  # raises on any mismatch
    assert (fitted / "config.yaml").read_text() == (model_dir / "config.yaml").read_text()
    bank = np.load(fitted / "fitted" / "anomaly" / "memory_bank.npy")
    assert bank.dtype == np.float16 and bank.shape == (round(20 * 16 * 16 * 0.05), 152)


def test_eval_json_has_the_named_keys_and_a_report(fitted, suite, tmp_path, capsys):
    assert main(["eval", str(fitted), "--test", str(suite["test"]), "--report", str(tmp_path), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert NAMED_KEYS <= set(summary)
    assert summary["image_auroc"] >= 0.9 and summary["pixel_auroc"] >= 0.9
    assert 0.0 <= summary["false_detection_rate"] <= 0.5 and 0.0 <= summary["miss_rate"] <= 0.5
    assert set(summary["per_class"]) == {"good", "scratch", "spot", "crack"}
    assert summary["per_class"]["good"]["count"] == 8
    assert summary["boxes_any_type"]["overall"]["recall"] > 0.3  # boxes land on the painted defects
    report = (tmp_path / "report.html").read_text()
    assert "ROC" in report and "Confusion matrix" in report and report.count("data:image/png;base64,") >= 4


def test_fit_reports_every_bad_manifest_row_on_one_line(suite, model_dir, tmp_path, capsys):
    manifest = tmp_path / "train.csv"
    (tmp_path / "broken.png").write_bytes(b"not an image")
    good = suite["train"].parent / "train" / "good_000.png"
    manifest.write_text(f"image,label\n{good},good\nmissing.png,good\nbroken.png,good\n{good},\n")
    out = tmp_path / "out"
    assert main(["fit", str(model_dir), "--train", str(manifest), "--out", str(out)]) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1
    assert "line 3" in error and "missing.png" in error and "line 4" in error and "line 5" in error
    assert not out.exists()  # nothing was copied or computed


def test_fit_refuses_a_non_empty_out_folder(suite, model_dir, tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("mine")
    assert main(["fit", str(model_dir), "--train", str(suite["train"]), "--out", str(tmp_path)]) == 2
    assert "not an empty folder" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_calibrate_hits_the_requested_false_detection_rate(fitted, suite, tmp_path):
    folder = tmp_path / fitted.name  # a copy keeps the model's name, so it keeps the folder name
    shutil.copytree(fitted, folder)
    assert main(["calibrate", str(folder), "--val", str(suite["val"]), "--rule", "fdr", "--target-fdr", "0.25"]) == 0
    calibration = json.loads((folder / "fitted" / "anomaly" / "calibration.json").read_text())
    assert calibration["rule"] == "fdr" and calibration["target_fdr"] == 0.25
    summary, _ = evaluate(folder, suite["val"])  # loads through the re-signed manifest, predicts as served
    assert summary["false_detection_rate"] == 0.25  # 8 good validation parts: exactly 2 flagged


def test_calibrate_refuses_an_unfitted_folder(model_dir, suite, capsys):
    assert main(["calibrate", str(model_dir), "--val", str(suite["val"])]) == 2
    assert "not a fitted model folder" in capsys.readouterr().err
