"""config/README.md's arms table, generated from the method declarations (``mmie/arms/methods``): each
method's settings with their defaults and meanings, what the method is, and which arms run per seed.
The declarations are the one source; the table in the README is rewritten from them and a test fails
when it is stale.

    python -m mmie.arms.docs config/README.md           # rewrite the table in place
    python -m mmie.arms.docs config/README.md --check   # exit 1 when it is stale
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from mmie.arms.method import NO_DEFAULT, Method, Setting

BEGIN = ("<!-- arms table: generated from mmie/arms/methods by `python -m mmie.arms.docs config/README.md`; "
         "edit the method declarations, not this table -->")
END = "<!-- end of the generated arms table -->"


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return ", ".join(_value(v) for v in value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def setting_text(setting: Setting) -> str:
    if setting.default_doc:
        default = setting.default_doc
    elif setting.default is NO_DEFAULT:
        default = "none"
    else:
        default = f"`{_value(setting.default)}`"
    return f"`{setting.name}` ({default}): {setting.description}"


def method_row(declared: Method) -> str:
    settings = [setting_text(s) for s in declared.settings]
    if declared.trains:
        settings.append("`train` (below)")
    return (f"| `{declared.name}` | {'<br>'.join(_cell(s) for s in settings) or '—'} | "
            f"{_cell(declared.description or declared.summary)} |")


def table(found: dict[str, Method] | None = None) -> str:
    """The markdown between the markers: the table and the note on seeds."""
    if found is None:
        from mmie.arms.methods import methods

        found = methods()
    rows = [method_row(m) for m in found.values()]
    once = [f"`{n}`" for n, m in found.items() if not (m.trains or m.seeded)]
    per_seed = [f"`{n}`" for n, m in found.items() if m.trains or m.seeded]
    trained = [f"`{n}`" for n, m in found.items() if m.trains]
    return "\n".join([
        "| method | settings (default): meaning | what |",
        "|---|---|---|",
        *rows,
        "",
        f"Arms whose outputs do not depend on the seed under greedy decoding ({', '.join(once)}) are evaluated "
        f"once, at the first of `seeds`;",
        f"{', '.join(per_seed)}, gates `on:` a trained arm, and every arm when `generation.do_sample: true`, per seed.",
        f"Trained methods ({', '.join(trained)}) take `train` (below).",
    ])


def rewrite(text: str, found: dict[str, Method] | None = None) -> str:
    """``text`` with the part between the markers replaced by the current table."""
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ValueError(f"the arms table markers must appear once each, in order: {BEGIN!r} … {END!r}")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    return f"{head}{BEGIN}\n{table(found)}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("readme", type=Path)
    parser.add_argument("--check", action="store_true", help="exit 1 when the table is stale; write nothing")
    args = parser.parse_args(argv)
    text = args.readme.read_text(encoding="utf-8")
    new = rewrite(text)
    if args.check:
        if new != text:
            print(f"{args.readme}: the arms table is stale; run python -m mmie.arms.docs {args.readme}",
                  file=sys.stderr)
            return 1
        return 0
    if new != text:
        args.readme.write_text(new, encoding="utf-8")
        print(f"{args.readme}: arms table rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
