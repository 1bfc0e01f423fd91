"""mmfusion: multimodal inspection and analysis pipelines (encoders -> fusion -> heads)."""

__version__ = "0.1.0"
