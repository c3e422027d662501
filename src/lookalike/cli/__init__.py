"""`lookalike` command line. User mistakes print one line and exit 2; no traceback.

The parser is thin: each area brings its own subcommands through the `lookalike.commands` entry-point
group (as pytest and flake8 find their plugins), so the core never imports the studies that plug into it.
Human lines and progress go to stderr through `logging` (`-v` for more, `-q` for warnings only);
stdout carries each command's result alone, so `--format json` output can be piped.
"""

from __future__ import annotations

import argparse
import logging
import sys
from importlib.metadata import entry_points

from lookalike.errors import LookalikeError

ENTRY_POINTS = "lookalike.commands"


def group(sub: argparse._SubParsersAction, name: str, help: str) -> argparse._SubParsersAction:
    """The subcommands of group `name` (e.g. `itembank`), created by whichever plugin asks first, so
    that several plugins can add to one group (the library's `itembank search`, the studies' `itembank study`)."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=help)
        parser.set_defaults(_group=parser.add_subparsers(dest=f"{name}_command", required=True))
    return parser.get_default("_group")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lookalike", description=__doc__.split("\n")[0] if __doc__ else None)
    verbosity = p.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = p.add_subparsers(dest="command", required=True)
    plugins = sorted(entry_points(group=ENTRY_POINTS), key=lambda ep: (ep.name != "core", ep.name))
    if not plugins:
        raise LookalikeError(
            f"no commands registered under the {ENTRY_POINTS!r} entry points: reinstall lookalike (pip install -e .)"
        )
    for ep in plugins:
        ep.load()(sub)
    return p


class StderrHandler(logging.StreamHandler):
    """Writes to whatever `sys.stderr` is when a record comes (as logging's last-resort handler does), so a
    caller that swaps it (pytest's capture, a notebook) gets the lines, never a stale or closed stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def setup_logging(verbose: bool = False, quiet: bool = False) -> None:
    """Human lines on stderr: what the library logs at INFO (DEBUG with -v, WARNING with -q)."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root = logging.getLogger("lookalike")
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Records still reach the root logger's handlers: none in the CLI's process (so no line twice), but a
    # host that calls main() keeps its own (pytest's caplog sees lookalike's records after any command ran).
    root.propagate = True


def main(argv: list[str] | None = None) -> None:
    try:
        args = build_parser().parse_args(argv)
        setup_logging(args.verbose, args.quiet)
        if args.quiet and hasattr(args, "no_progress"):
            args.no_progress = True  # -q: warnings and errors only, no progress bars either
        args.func(args)
    except LookalikeError as e:
        print(f"lookalike: error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("lookalike: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
