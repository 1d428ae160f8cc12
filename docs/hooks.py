"""MkDocs hooks: the command-line reference, generated from the argparse parser at build time,
and the figures that live beside the benchmarks that make them (served, not copied into docs/).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parent.parent

# Figures that a benchmark script writes next to its raw rows: (page path, file in the repo).
FIGURES = {
    "images/robust_budget.png": "benchmarks/results/robust_budget.png",
    "images/robust_features.png": "benchmarks/results/robust_features.png",
}


def on_files(files: Files, config) -> Files:
    """Add the generated CLI reference and the benchmark figures to the site."""
    files.append(File.generated(config, "cli.md", content=cli_reference()))
    for uri, source in FIGURES.items():
        files.append(File.generated(config, uri, abs_src_path=str(ROOT / source)))
    return files


def cli_reference() -> str:
    """Markdown for every verb (and sub-verb) of ``patchguard``: usage, description, flags."""
    # Document the tree being built, not whatever patchguard happens to be installed.
    if str(ROOT / "src") not in sys.path:
        sys.path.insert(0, str(ROOT / "src"))
    from patchguard.cli import build_parser

    parser = build_parser()
    parts = [
        "# Command line reference\n",
        "Generated from the argument parser (`patchguard.cli.build_parser`) when the site is "
        "built, so it always matches the installed version. Every flag can also come from a "
        "YAML file (`--config run.yaml`, keys spelled like the flags; flags on the command line "
        "win), and the original's underscore spellings (`--class_name`) are accepted.\n",
        _options_table(parser),
    ]
    for path, sub, summary in _verbs(parser, ()):
        parts.append(_verb_section(path, sub, summary))
    return "\n".join(parts)


def _verbs(parser: argparse.ArgumentParser, path: tuple[str, ...]):
    """(verb path, its parser, its one-line help) for every verb, depth first."""
    for action in parser._actions:  # noqa: SLF001
        if not isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            continue
        summaries = {a.dest: a.help or "" for a in action._choices_actions}  # noqa: SLF001
        for name, sub in action.choices.items():
            yield (*path, name), sub, summaries.get(name, "")
            yield from _verbs(sub, (*path, name))


def _verb_section(path: tuple[str, ...], parser: argparse.ArgumentParser, summary: str) -> str:
    level = "#" * min(len(path) + 1, 4)
    name = " ".join(path)
    usage = " ".join(["patchguard", name, "[OPTIONS]", *_positionals(parser)])
    lines = [f"{level} `patchguard {name}`\n"]
    text = parser.description or summary
    if text:
        lines.append(_escape(text.strip()) + "\n")
    lines.append(f"```text\n{usage}\n```\n")
    lines.append(_options_table(parser))
    return "\n".join(lines)


def _positionals(parser: argparse.ArgumentParser) -> list[str]:
    """The positional arguments of a verb as its usage line names them."""
    names = []
    for action in parser._actions:  # noqa: SLF001
        if action.option_strings:
            continue
        metavar = _metavar(action.metavar) if action.metavar else action.dest.upper()
        if isinstance(action, argparse._SubParsersAction) or action.nargs in ("+", "*"):  # noqa: SLF001
            metavar += " ..."
        names.append(metavar)
    return names


def _options_table(parser: argparse.ArgumentParser) -> str:
    formatter = parser._get_formatter()  # noqa: SLF001
    rows = []
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            choices = ", ".join(f"`{c}`" for c in action.choices)
            rows.append((f"`{action.metavar or 'VERB'}`", f"one of {choices}", ""))
            continue
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):  # noqa: SLF001
            continue
        flags = ", ".join(f"`{s}`" for s in _public_flags(action)) or f"`{action.dest}`"
        if action.metavar is not None and action.nargs != 0:
            flags += f" `{_metavar(action.metavar)}`"
        help_text = formatter._expand_help(action) if action.help else ""  # noqa: SLF001
        if action.choices is not None and not isinstance(action.choices, dict):
            listed = ", ".join(f"`{c}`" for c in action.choices)
            if listed and listed not in help_text:
                help_text += f" (one of {listed})"
        rows.append((flags, _escape(help_text), _default(action)))
    if not rows:
        return ""
    table = ["| option | what it does | default |", "| --- | --- | --- |"]
    table += [f"| {flags} | {text} | {default} |" for flags, text, default in rows]
    return "\n".join(table) + "\n"


def _public_flags(action: argparse.Action) -> list[str]:
    # The underscore aliases of the original's spellings would double every row.
    flags = action.option_strings
    dashed = [f for f in flags if "_" not in f.lstrip("-")]
    return dashed or list(flags)


def _metavar(metavar: str | tuple[str, ...]) -> str:
    return " ".join(metavar) if isinstance(metavar, tuple) else metavar


def _default(action: argparse.Action) -> str:
    if action.required and action.option_strings:
        return "required"
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS):
        return ""
    value = action.default
    if isinstance(value, (list, tuple)):
        value = " ".join(map(str, value))
    return f"`{value}`"


def _escape(text: str) -> str:
    """Text of a help string made safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
