"""mmfusion: multimodal inspection and analysis pipelines (encoders -> fusion -> heads)."""

import os

# OpenCV reads its decoders' size limit once, when cv2 loads: set it before any mmfusion module imports cv2.
# The same number as media.MAX_IMAGE_PIXELS (a test checks); an operator's own setting wins.
os.environ.setdefault("OPENCV_IO_MAX_IMAGE_PIXELS", "64000000")

__version__ = "0.1.0"
