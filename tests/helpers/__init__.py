"""Helpers shared by the tests: tiny models and configs, generated data sets, attack batches,
a local Google-Drive-like server, and the script behind the stored training losses.

Import them as ``from helpers.models import tiny_model``; ``tests/conftest.py`` holds only
fixtures and session settings.
"""
