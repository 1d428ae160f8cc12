"""Write docs/options.md, the tables of training and evaluation options, from their declarations.

Run from the repository root after adding or changing an option in src/patchguard/config.py
or a field of AttackSettings in src/patchguard/adversarial/settings.py:

    python docs/gen_options.py          # rewrite docs/options.md
    python docs/gen_options.py --check  # exit 1 when docs/options.md is out of date
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

TARGET = Path(__file__).with_name("options.md")


def page() -> str:
    """The text of docs/options.md: the training sections, then the evaluation section."""
    from patchguard.adversarial.settings import options_markdown as evaluation_markdown
    from patchguard.config import options_markdown

    return options_markdown() + "\n" + evaluation_markdown() + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write (or with --check compare) docs/options.md."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare, write nothing")
    args = parser.parse_args(argv)
    text = page()
    if args.check:
        if not TARGET.exists() or TARGET.read_text(encoding="utf-8") != text:
            print(f"{TARGET} is out of date: run python docs/gen_options.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(text, encoding="utf-8")
    print(f"wrote {TARGET}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
