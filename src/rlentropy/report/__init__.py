"""The entropy-dynamics report: plots and a self-contained report.html for one or more runs.

    from rlentropy.report import write_report
    write_report(["runs/a", "runs/b"], "runs/compare")   # -> runs/compare/report.html

`rlentropy report RUN [RUN ...]` calls the same function. See docs/evaluation.md.
"""

from rlentropy.report.html import report_command, write_report
from rlentropy.report.rundata import RunData, load_run, load_runs

__all__ = ["RunData", "load_run", "load_runs", "report_command", "write_report"]
