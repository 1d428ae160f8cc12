"""Evaluation: metrics, clean and attacked evaluation (of PatchGuard, and of any detector in
``any_detector``), sanity checks against gradient masking, the paper-audit, and reports.

``metrics`` < ``evaluator`` < ``sanity``, ``any_detector``, ``audit``; ``report/`` (tables,
plots, heatmap panels, the HTML page) only formats results.
"""
