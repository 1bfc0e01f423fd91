"""The edge image serves without the training and report packages: loading its models and the server imports none."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.deploy.test_image import EDGE_MODELS, EXCLUDED_FROM_EDGE

REPO = Path(__file__).resolve().parents[2]


def test_serving_the_edge_models_imports_nothing_the_edge_image_leaves_out():
    # a fresh interpreter: this test session has imported scikit-learn and the rest long ago
    script = (
        "import sys\n"
        "import mmfusion.serving.server\n"
        "from mmfusion.pipeline import Pipeline\n"
        f"for name in {list(EDGE_MODELS)!r}:\n"
        "    Pipeline(f'models/{name}', backend='torch')\n"
        f"print(sorted(name for name in {list(EXCLUDED_FROM_EDGE)!r} if name in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "[]", done.stdout
