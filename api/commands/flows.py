"""``orchestrator flows``: the flows a run can name, with the inputs each takes.

The table shows each flow's one-line description and its inputs (required ones marked ``*``);
``--json`` prints the full definitions (spine, signal-chosen personas, caps, waves, report
sections), which is also what the API's flow catalog serves.
"""

from __future__ import annotations

import argparse

NAME = "flows"
HELP = "List the flows (code-review, investigate, …) with the inputs each one takes."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print the full definitions as JSON")


def run(args: argparse.Namespace, settings) -> int:
    import sys

    import msgspec

    from conductor.flows import FLOWS

    flows = list(FLOWS.values())
    if args.json:
        sys.stdout.write(msgspec.json.format(msgspec.json.encode(flows)).decode() + "\n")
        return 0

    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"{len(flows)} flows", caption="* required input", show_lines=True)
    table.add_column("flow / description", ratio=1)
    table.add_column("inputs", no_wrap=True)
    for flow in flows:
        cell = Text(flow.name, style="bold")
        cell.append("\n" + flow.description, style="dim")
        inputs = "\n".join(
            ("--" + i.field if i.field != "paths" else "--path") + (f" ({i.name})" if i.name != i.field else "")
            + (" *" if i.required else "")
            for i in flow.inputs
        )
        table.add_row(cell, inputs)
    Console().print(table)
    return 0
