"""Reports of evaluation results: terminal, Markdown, JSON and CSV tables (``tables``), plots
(``plots``), heatmap panels (``panels``) and the self-contained HTML page (``html``). They only
format results; the ``report`` verb lives in :mod:`patchguard.cli.report`.
"""
