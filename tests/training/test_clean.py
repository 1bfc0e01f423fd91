"""`data clean`: unreadable and empty files, exact and near duplicates, conflicting labels, all reported."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from mmfusion.cli.main import main
from mmfusion.data.table import TableError, read_table
from mmfusion.training.clean import clean_table
from mmfusion.training.fingerprints import audio_fingerprint, image_phash, jaccard, text_shingles
from tests.training.helpers import read_rows, stripes, write_image, write_rows


def _wav(path, waveform: np.ndarray) -> str:
    import wave

    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(16000)
        handle.writeframes((np.clip(waveform, -1, 1) * 32767).astype("<i2").tobytes())
    return path.name


def test_images_exact_near_conflicting_unreadable_and_empty(tmp_path):
    base = stripes(1, vertical=True, size=64)
    write_image(tmp_path / "a.png", base)
    write_image(tmp_path / "a_copy.png", base)  # same pixels, another file
    write_image(tmp_path / "a_near.png", np.clip(base.astype(int) + 3, 0, 255).astype(np.uint8))
    write_image(tmp_path / "b.png", stripes(2, vertical=False, size=64))
    write_image(tmp_path / "c.png", stripes(3, vertical=False, size=64)[::-1, ::-1].copy())
    (tmp_path / "broken.png").write_bytes(b"not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    rows = [
        {"image": "a.png", "label": "scratch"},  # line 2
        {"image": "a_copy.png", "label": "scratch"},  # 3: exact duplicate of 2
        {"image": "a_near.png", "label": "scratch"},  # 4: near duplicate of 2
        {"image": "b.png", "label": "spot"},  # 5: conflicts with 6
        {"image": "b.png", "label": "crack"},  # 6
        {"image": "broken.png", "label": "spot"},  # 7
        {"image": "empty.png", "label": "spot"},  # 8
        {"image": "missing.png", "label": "spot"},  # 9
        {"image": "c.png", "label": "crack"},  # 10: kept
    ]
    table = read_table(write_rows(tmp_path / "in.csv", rows), check_files=False)
    result = clean_table(table)
    assert [r.line for r in result.kept] == [2, 10]
    reasons = {d.line: (d.reason, d.duplicate_of) for d in result.decisions}
    assert reasons == {
        3: ("exact_duplicate", 2),
        4: ("near_duplicate", 2),
        5: ("conflicting_labels", 5),
        6: ("conflicting_labels", 5),
        7: ("unreadable", None),
        8: ("empty", None),
        9: ("unreadable", None),
    }
    assert result.counts() == {
        "exact_duplicate": 1,
        "near_duplicate": 1,
        "conflicting_labels": 2,
        "unreadable": 2,
        "empty": 1,
    }


def test_near_duplicate_with_another_label_is_kept_and_flagged(tmp_path):
    coarse = np.random.default_rng(0).integers(0, 256, (6, 6, 3)).astype(np.uint8)
    base = cv2.resize(coarse, (96, 96), interpolation=cv2.INTER_CUBIC)  # a smooth part photo
    write_image(tmp_path / "good.png", base)
    defect = base.copy()
    defect[40:42, 30:38] = 255  # a small scratch barely moves the perceptual hash
    write_image(tmp_path / "scratch.png", defect)
    assert bin(image_phash(base) ^ image_phash(defect)).count("1") == 4
    table = read_table(
        write_rows(
            tmp_path / "in.csv", [{"image": "good.png", "label": "good"}, {"image": "scratch.png", "label": "scratch"}]
        )
    )
    result = clean_table(table)
    assert [r.line for r in result.kept] == [2, 3]
    assert [(d.line, d.action, d.reason) for d in result.decisions] == [(3, "kept", "near_duplicate_other_label")]


def fp_jaccard(a: str, b: str) -> float:
    return jaccard(text_shingles(a), text_shingles(b))


def test_texts_chinese_and_english(tmp_path):
    rows = [
        {"text": "数控机床主轴异常，振动过大，需要停机检查", "label": "fault"},  # 2
        {"text": "数控机床主轴异常,振动过大,需要停机检查。", "label": "fault"},  # 3: near (punctuation)
        {"text": "保理融资合同已签署", "label": "contract"},  # 4
        {"text": "  保理融资合同已签署 ", "label": "invoice"},  # 5: same content, other label
        {"text": "Spindle vibration on line two, stop the machine", "label": "fault"},  # 6
        {"text": "spindle vibration on line two; stop the machine!", "label": "fault"},  # 7: near
        {"text": "All checks passed, running smooth", "label": "ok"},  # 8
        {"text": "   ", "label": "ok"},  # 9: empty
    ]
    result = clean_table(read_table(write_rows(tmp_path / "t.csv", rows), require_media=False))
    assert [r.line for r in result.kept] == [2, 6, 8]
    assert {d.line: d.reason for d in result.decisions} == {
        3: "near_duplicate",
        4: "conflicting_labels",
        5: "conflicting_labels",
        7: "near_duplicate",
        9: "empty",
    }
    one_word = fp_jaccard("spindle vibration on line two", "spindle vibration on line four")
    assert 0.5 < one_word < 0.8  # below the default 0.8: a changed fact is not a duplicate
    assert text_shingles("保理融资") == {"保理融", "理融资"}


def test_audio_fingerprint_finds_a_louder_copy(tmp_path):
    time = np.arange(16000) / 16000
    envelope = 0.2 + 0.2 * np.sin(2 * np.pi * 3 * time) ** 2
    rng = np.random.default_rng(0)
    tone = rng.normal(size=time.size) * envelope  # a noisy machine recording
    other = rng.normal(size=time.size) * envelope  # another recording of the same kind
    rows = [
        {"audio": _wav(tmp_path / "a.wav", tone), "label": "alarm"},
        {"audio": _wav(tmp_path / "a_loud.wav", 1.8 * tone + 0.01 * rng.normal(size=time.size)), "label": "alarm"},
        {"audio": _wav(tmp_path / "b.wav", other), "label": "alarm"},
        {"audio": _wav(tmp_path / "silent.wav", np.zeros(8000)), "label": "alarm"},
    ]
    result = clean_table(read_table(write_rows(tmp_path / "a.csv", rows)))
    assert [r.line for r in result.kept] == [2, 4]
    assert {d.line: d.reason for d in result.decisions} == {3: "near_duplicate", 5: "empty"}
    assert audio_fingerprint(tone).distance(audio_fingerprint(other)) > 0.3


def test_cli_writes_cleaned_table_and_report(tmp_path, capsys):
    rows = [
        {"text": "bearing worn", "label": "fault"},
        {"text": "Bearing  worn", "label": "fault"},
        {"text": "ok", "label": "ok"},
    ]
    write_rows(tmp_path / "in.csv", rows)
    assert main(["data", "clean", str(tmp_path / "in.csv"), "--out", str(tmp_path / "out" / "clean.csv")]) == 0
    assert [r["text"] for r in read_rows(tmp_path / "out" / "clean.csv")] == ["bearing worn", "ok"]
    report = read_rows(tmp_path / "out" / "clean.report.csv")
    assert report == [
        {"line": "3", "action": "dropped", "reason": "exact_duplicate", "duplicate_of": "2", "detail": "same content"}
    ]
    assert "kept 2 of 3 rows" in capsys.readouterr().out


def test_bad_rows_are_listed_with_line_numbers(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("text,label\nfine,ok\n,ok\nsome text,\ntoo,many,fields\n")
    with pytest.raises(TableError) as error:
        read_table(tmp_path / "bad.csv")
    assert str(error.value).endswith(
        "3 bad row(s): line 3: no text; expected one; line 4: label: empty; line 5: 3 fields; the header has 2"
    )
    (tmp_path / "header.csv").write_text("path,kind\nx,y\n")
    assert main(["data", "clean", str(tmp_path / "header.csv"), "--out", str(tmp_path / "o.csv")]) == 2
    assert "expected at least one of image, video, audio, text and label" in capsys.readouterr().err
