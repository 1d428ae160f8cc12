"""Evaluation: metrics, clean and attacked evaluation, sanity checks against gradient masking,
reports (tables, JSON, CSV, Markdown), plots and heatmap panels.

``metrics`` < ``evaluator`` < ``sanity``; ``reports``, ``plots`` and ``visualization`` only
format results.
"""
