"""The ``orchestrator`` command line: one module per subcommand under ``api/commands``.

Each command module defines ``NAME``, ``HELP``, ``add_arguments(parser)`` and
``run(args, settings) -> int``, and imports its heavy dependencies (Ray, DuckDB) inside ``run``
so that ``orchestrator --help`` stays instant.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import signal
import sys

import api.commands
from api.commands import CommandError
from actors.config import ConfigError, Settings
from personas import PersonaError


def _commands() -> list:
    mods = [
        importlib.import_module(f"api.commands.{m.name}")
        for m in pkgutil.iter_modules(api.commands.__path__)
        if not m.name.startswith("_")
    ]
    return sorted(mods, key=lambda m: m.NAME)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="orchestrator",
        description="Run read-only multi-agent analysis flows over a repository.",
    )
    parser.add_argument("--data-dir", help="where events.duckdb lives (ORCH_DATA_DIR)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for mod in _commands():
        p = sub.add_parser(mod.NAME, help=mod.HELP, description=mod.HELP)
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.load(data_dir=args.data_dir)
        return int(args._run(args, settings) or 0)
    except (CommandError, ConfigError) as exc:
        print(f"orchestrator: {exc}", file=sys.stderr)
        return getattr(exc, "code", 2)
    except PersonaError as exc:  # ORCH_PERSONAS_DIR holds a file that cannot be used
        print(f"orchestrator: cannot load personas: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("orchestrator: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (``orchestrator schema | head``): stop quietly, as other tools
        # do. Point stdout at /dev/null so the interpreter's last flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE


if __name__ == "__main__":
    sys.exit(main())
