"""Human-readable documents about runs and studies: the self-contained HTML report (`xfer report`), the model card,
and the misclassified examples they show. Reads runs through runs/folder.py only; imports nothing of tools."""

from xfer.report.card import model_card
from xfer.report.examples import misclassified
from xfer.report.html import report_kind, run_report_html, write_report

__all__ = ["misclassified", "model_card", "report_kind", "run_report_html", "write_report"]
