"""`kiln`: the argparse dispatcher. Each subcommand lives in its own module with
``add_parser(subparsers, common)`` and ``run(args) -> exit code``.

Errors Kiln raises on purpose (KilnError, and the CLI's own CLIError) print as one
``kiln: error: ...`` line with exit code 1; the traceback only with --verbose. Usage errors exit 2 (argparse).
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
import traceback

# The parser table: subcommand -> module in kiln.cli (the only module-level state).
SUBCOMMANDS = {
    "build": "build",
    "bench": "bench",
    "run": "run",
    "inspect": "inspect",
    "compare": "compare",
    "exec": "exec",
    "quantize": "quantize",
    "serve": "serve",
    "sign": "sign",
    "verify": "verify",
}


class Parser(argparse.ArgumentParser):
    """argparse, with usage errors as one `kiln: error: ...` line (exit 2) like every other error."""

    def error(self, message: str):
        where = self.prog.removeprefix("kiln").strip()
        hint = self._did_you_mean(message)
        print(f"kiln: error: {where + ': ' if where else ''}{message}{hint} (see '{self.prog} --help')",
              file=sys.stderr)
        sys.exit(2)

    def _did_you_mean(self, message: str) -> str:
        """"; did you mean --fp16?" for a mistyped flag or subcommand, from every flag this parser and its
        subcommands know."""
        import difflib
        import re
        known, commands = set(self._option_string_actions), []
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands = list(action.choices)
                for sub in action.choices.values():
                    known |= set(sub._option_string_actions)
        m = re.search(r"invalid choice: '([^']*)'", message)
        words = [m.group(1)] if m else re.findall(r"(?<!\S)(--?[\w-]+)", message.split(":", 1)[-1])
        hints = []
        for w in words:
            pool = commands if m else sorted(known)
            close = difflib.get_close_matches(w.split("=")[0], pool, n=1, cutoff=0.6)
            if close and close[0] != w:
                hints.append(f"{w} -> {close[0]}")
        if not hints:
            return ""
        return "; did you mean " + ", ".join(h.split(" -> ")[1] if len(hints) == 1 else h for h in hints) + "?"


def make_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-v", "--verbose", action="count", default=0,
                        help="more output: -v info logs and tracebacks on error, -vv the graph after each pass")
    common.add_argument("--threads", type=int, metavar="N",
                        help="CPU intra-op threads for building and running (default: torch's, one per core); "
                             "the pool's idle threads sleep (OMP_WAIT_POLICY=PASSIVE unless you set it)")
    common.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing but errors (no progress, no warnings); the exit code tells the result")
    common.add_argument("--json", action="store_true",
                        help="print the result as one JSON document on stdout (kiln serve: one JSON line per event)")
    common.add_argument("--plugin", action="append", default=[], metavar="MODULE",
                        help="import MODULE (by name, from the current directory or PYTHONPATH) for the custom ops "
                             "it declares (kiln.plugin.PluginLibrary or kiln.trt.plugin); repeatable")
    parser = Parser(
        prog="kiln", description="Kiln: build, run, benchmark and inspect optimized ONNX engines.",
        epilog="Run 'kiln COMMAND --help' for a command's flags. Exit codes: 0 ok, 1 error, 2 bad usage, "
               "3 compare: outputs differ.")
    from .. import __version__
    parser.add_argument("--version", action="version", version=f"kiln {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, module in SUBCOMMANDS.items():
        importlib.import_module(f".{module}", __package__).add_parser(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv in (["--version"], ["-V"]):  # answered before any subcommand (and torch) is imported
        from ..version import __version__
        print(f"kiln {__version__}")
        return 0
    if argv[:1] == ["exec"]:
        # trtexec's flags do not fit argparse's conventions (camelCase, --flag=value only); exec parses its own.
        from .exec import main as exec_main
        return _guard(lambda: exec_main(argv[1:]), verbose="--verbose" in argv or "-v" in argv)
    args = make_parser().parse_args(argv)
    level = logging.INFO if args.verbose else logging.ERROR if args.quiet else logging.WARNING
    logging.basicConfig(level=level, format="[kiln] %(message)s")
    module = importlib.import_module(f".{SUBCOMMANDS[args.command]}", __package__)
    return _guard(lambda: _run(module, args), verbose=args.verbose > 0)


def _run(module, args) -> int:
    from ..threads import describe, set_threads
    if args.threads is not None:
        set_threads(args.threads)
    logging.getLogger("kiln.threads").info(describe())
    return module.run(args)


def _guard(fn, verbose: bool) -> int:
    from ..errors import KilnError
    try:
        return int(fn() or 0)
    except KeyboardInterrupt:
        print("kiln: interrupted", file=sys.stderr)
        return 130
    except KilnError as e:
        return _fail(str(e), verbose)
    except OSError as e:  # a file we could not read or write
        where = f" {e.filename!r}" if e.filename else ""
        return _fail(f"{e.strerror or e}{where}", verbose)
    except Exception as e:  # noqa: BLE001 - a bug: still one line, but say how to get the details
        return _fail(f"internal error: {type(e).__name__}: {e}"
                     + ("" if verbose else " (run with --verbose for the traceback)"), verbose)


def _fail(msg: str, verbose: bool) -> int:
    if verbose:
        traceback.print_exc()
    print(f"kiln: error: {msg}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
