"""``orchestrator schema``: the JSON Schema of every event and WebSocket frame."""

from __future__ import annotations

import argparse
import json

from api.commands import write_output

NAME = "schema"
HELP = "Print the JSON Schema of the WebSocket frames and the event union, for TypeScript clients."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--output", "-o", help="write to this file instead of stdout")
    parser.add_argument(
        "--events-only", action="store_true", help="only the event union (no WebSocket frames)"
    )


def run(args: argparse.Namespace, settings) -> int:
    if args.events_only:
        from events import schema

        doc = schema()
    else:
        # The same document as GET /api/schema: client frames, server frames, events.
        from api.ws import schema_document

        doc = schema_document()
    text = json.dumps(doc, indent=2, sort_keys=True)
    if args.output is not None:
        write_output(args.output, text + "\n")
    else:
        print(text)
    return 0
