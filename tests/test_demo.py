"""`make run` (mmfusion demo) in-process sections: every section prints its real result."""

from __future__ import annotations

import re

from mmfusion.demo.run import run_demo


def test_demo_local_sections(capsys, tmp_path):
    run_demo(out_dir=tmp_path, service=False)
    out = capsys.readouterr().out
    for section in ("1. image check", "2. transcription", "3. text similarity", "4. fused prediction", "5. golden"):
        assert section in out
    assert "Egyptian cat" in out  # chelsea.jpg through the embedded ImageNet weights
    found = re.search(r"pcb_tested.jpg vs pcb_template.jpg -> defect, (\d+) defects", out)
    assert found and int(found.group(1)) >= 5  # the sample pair has 10 annotated defects
