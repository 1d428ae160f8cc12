"""The registries: names without importing their targets, every entry resolves, bad names are
refused with the choices, and the command line builds without torch."""

from __future__ import annotations

import subprocess
import sys

import pytest

from patchguard.utils.registry import Registry

# Every registry of the package, as (module, attribute): names come from these and nowhere else.
REGISTRIES = [
    ("patchguard.adversarial.names", "ATTACKS"),
    ("patchguard.adversarial.names", "OBJECTIVES"),
    ("patchguard.config", "TRAINING_ATTACKS"),
    ("patchguard.config", "TRAINING_OBJECTIVES"),
    ("patchguard.config", "PRESETS"),
    ("patchguard.baselines.registry", "BASELINES"),
    ("patchguard.data.layouts.registry", "LAYOUTS"),
]


def test_lazy_entries_are_imported_on_first_lookup_only(tmp_path, monkeypatch):
    (tmp_path / "plugin_for_registry_test.py").write_text("VALUE = object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry = Registry("thing", {"lazy": "plugin_for_registry_test:VALUE", "eager": 3})
    assert list(registry) == ["lazy", "eager"] and "lazy" in registry and len(registry) == 2
    assert "plugin_for_registry_test" not in sys.modules
    value = registry["lazy"]
    assert sys.modules["plugin_for_registry_test"].VALUE is value
    assert registry["lazy"] is value and registry["eager"] == 3


def test_unknown_names_name_the_choices_as_value_and_key_errors():
    registry = Registry("widget", {"a": 1, "b": 2})
    with pytest.raises(ValueError, match=r"unknown widget 'c'; available: a, b"):
        registry["c"]
    with pytest.raises(KeyError):
        registry["c"]
    assert registry.get("c") is None  # Mapping.get works on KeyError
    with pytest.raises(ValueError, match="registered already"):
        registry.register("a", 3)


@pytest.mark.parametrize("module, attribute", REGISTRIES)
def test_every_entry_of_every_registry_resolves(module, attribute):
    import importlib

    registry = getattr(importlib.import_module(module), attribute)
    assert len(registry) > 0
    for name in registry:
        target = registry[name]
        assert target is not None and not isinstance(target, str), name


def test_the_command_line_builds_without_importing_torch():
    """``patchguard --help`` lists every registry's names without importing torch or timm."""
    code = ("import sys\nfrom patchguard.cli import build_parser\n"
            "text = build_parser().format_help()\n"
            "print('torch' in sys.modules, 'timm' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True)
    assert result.stdout.split() == ["False", "False"]

