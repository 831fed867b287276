"""Evaluation of synthetic tables: fidelity, utility, privacy and causal validity.

Use :func:`evaluate` to compare a synthetic table with real holdout rows and
:func:`write_report` to save ``report.json`` and a self-contained
``report.html``; ``fedsynth evaluate`` does both from the command line.
"""

from shared.evaluation.api import evaluate, write_report
from shared.evaluation.errors import EvaluationError
from shared.evaluation.inputs import Limits

__all__ = ["EvaluationError", "Limits", "evaluate", "write_report"]
