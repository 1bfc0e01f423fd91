"""Report generators behind one interface: template, hf_causal_lm, cross_modal."""

from mmfusion.reports.generators import (  # noqa: F401  (imported for registration)
    cross_modal,
    hf_causal_lm,
    template,
)
from mmfusion.reports.generators.base import GENERATORS, ReportGenerator, ReportInput

__all__ = ["GENERATORS", "ReportGenerator", "ReportInput"]
