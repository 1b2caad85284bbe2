"""``orchestrator schema``: the JSON Schema of every event (and WebSocket frame)."""

from __future__ import annotations

import argparse
import json

NAME = "schema"
HELP = "Print the JSON Schema of the event union, for TypeScript clients."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")


def run(args: argparse.Namespace, settings) -> int:
    from events import schema

    text = json.dumps(schema(), indent=2, sort_keys=True)
    if args.output:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    else:
        print(text)
    return 0
