"""``makevl report``: every system side by side on one preset, written down.

:mod:`.run` trains and scores the systems, :mod:`.claims` judges the report's
claims from the figures, :mod:`.render` writes ``report.json`` / ``report.md``
and :mod:`.plots` draws the PNGs.
"""

from makevl.evaluation.report.claims import check_claims, metric_drop
from makevl.evaluation.report.render import refresh_report, render_markdown, write_report
from makevl.evaluation.report.run import run_report

__all__ = [
    "check_claims",
    "metric_drop",
    "refresh_report",
    "render_markdown",
    "run_report",
    "write_report",
]
