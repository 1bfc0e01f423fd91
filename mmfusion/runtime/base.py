"""Backend contract: named numpy arrays in, named numpy arrays out."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from mmfusion.graph import PipelineGraph


class Backend:
    """Runs a pipeline graph. Tensors cross this boundary; Python objects do not."""

    registry_name: ClassVar[str]

    def load(self, model_dir: str | Path, graph: PipelineGraph | None = None) -> None:
        """Prepare to run the model folder (reusing an already built graph when given)."""
        raise NotImplementedError

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what `load` acquired."""
