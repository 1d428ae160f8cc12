"""Reports of evaluation results: terminal, Markdown, JSON and CSV tables (``tables``), plots
(``plots``), heatmap panels (``panels``), the self-contained HTML page (``html``) and which
epsilon is the headline for an image size (``headline``). They only
format results; the ``report`` verb lives in :mod:`patchguard.cli.report`.
"""
