"""``orchestrator personas``: the builtin personas and those in ORCH_PERSONAS_DIR.

The table shows each name with its lens, id prefix, slice and rules (evidence, YAGNI). ``--json`` prints the full persona
structs, prompt body included (a consumer can drop ``body``; it cannot get it back from a
listing that left it out).
"""

from __future__ import annotations

import argparse

NAME = "personas"
HELP = "List the personas (builtin and from ORCH_PERSONAS_DIR): lens, id prefix, slice, rules."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", action="store_true", help="print the full definitions, body included, as JSON"
    )


def run(args: argparse.Namespace, settings) -> int:
    import sys

    import msgspec

    from personas import load_personas

    personas = load_personas(settings.personas_dir or None)  # a bad one: api.cli says which
    builtin = load_personas()  # cached; tells the user's own personas apart in the table
    ordered = [personas[name] for name in sorted(personas)]
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(ordered)).decode() + "\n")
        return 0

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # The lens sits under the name, so the table stays readable on an 80-column terminal.
    table = Table(
        title=f"{len(ordered)} personas", caption="rules: E evidence, Y YAGNI", show_lines=True
    )
    table.add_column("persona / lens", ratio=1)
    table.add_column("id", no_wrap=True)
    table.add_column("slice", no_wrap=True)
    table.add_column("rules", no_wrap=True)
    for p in ordered:
        rules = ("E" if p.evidence_rule else "-") + ("Y" if p.yagni_rule else "-")
        cell = Text(p.name if p.name in builtin else f"{p.name} (user)", style="bold")
        cell.append("\n" + p.lens, style="dim")
        table.add_row(cell, p.id_prefix, p.slice, rules)
    Console().print(table)
    return 0
