"""Batch report: explain many images with several methods, score the maps, write a self-contained page.

``blackbox report MODEL INPUT... --methods a,b --out DIR`` (see :mod:`blackbox.report.run` for the files
and the resume rules, :mod:`blackbox.report.html` for the page, :mod:`blackbox.report.inputs` for what
INPUT may be).
"""

from .inputs import Entry, expand_inputs
from .run import (METRICS, ReportConfig, ReportSummary, parse_method_params, parse_methods, parse_metrics,
                  run_report)

__all__ = ["Entry", "expand_inputs", "METRICS", "ReportConfig", "ReportSummary", "parse_method_params",
           "parse_methods", "parse_metrics", "run_report"]
