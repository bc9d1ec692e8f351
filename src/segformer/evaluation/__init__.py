"""Evaluation: one confusion matrix over a dataset (exact under torchrun), mmseg's metric arithmetic, reports."""

from .evaluate import check_labels, evaluate, evaluate_confusion, format_table, write_report
from .metrics import ConfusionMatrix

__all__ = ["ConfusionMatrix", "check_labels", "evaluate", "evaluate_confusion", "format_table", "write_report"]
