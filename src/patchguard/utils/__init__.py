"""Foundation helpers that every other package may use and that import nothing of patchguard.

``files`` (atomic writes), ``checkpoint`` (safe checkpoint I/O), ``device`` (choosing a torch
device) and ``plotting`` (a headless matplotlib).
"""
