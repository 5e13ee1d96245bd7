"""`edge-irst <command>`: subcommands from a lazy table, so `edge-irst --help` imports neither torch nor a runtime.

Each command module defines `add_arguments(parser)` and `run(args) -> int`. Results go to stdout, logs to stderr.
Exit codes: 0 ok, 1 failure, 2 usage error, 130 interrupted (Ctrl-C), 143 terminated (SIGTERM, where the command
catches it: run).
"""
from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys

from edge_irst import __version__

# command -> (module, one-line help). Modules are imported only when their command runs.
COMMANDS = {
    "info": ("edge_irst.cli.info", "show a model's parameters/FLOPs, an artifact's I/O, or the installed backends"),
    "export": ("edge_irst.cli.export", "convert PyTorch weights to verified ONNX / NCNN / MNN / TFLite artifacts"),
    "run": ("edge_irst.cli.run", "detect targets on images, video, a camera, a stream or synthetic frames"),
    "bench": ("edge_irst.cli.bench", "benchmark artifacts x backends x threads x input sizes"),
    "eval": ("edge_irst.cli.eval", "evaluate a model (or saved predictions) on an IRSTD dataset"),
    "train": ("edge_irst.cli.train", "train a registry model on IRSTD datasets"),
}


THREADS_HELP = ("runtime threads: N, or auto = the count measured fastest for the model at load time "
                "(default: physical cores)")


def runtime_threads(text: str):
    """argparse type of --threads for the commands that run a model: an int >= 0, or "auto"."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a thread count (0 = physical cores) or 'auto'")
    return value


def positive_int(text: str) -> int:
    """argparse type of a count that must be at least 1 (e.g. torch's --threads, which has no "auto" nor 0)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a whole number >= 1")
    return value


def _available_commands() -> dict:
    return {name: spec for name, spec in COMMANDS.items() if importlib.util.find_spec(spec[0]) is not None}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-irst", description="Edge inference runtime for IR small targets.")
    parser.add_argument("--version", action="version", version=f"edge-irst {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output on stderr (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in _available_commands().items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:  # only the command being run pays for importing its module
            importlib.import_module(module).add_arguments(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2), stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if not args.command:
        parser.print_help()
        return 2
    from edge_irst.errors import EdgeIrstError

    try:
        code = int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)
        sys.stdout.flush()  # here, where a closed pipe is caught below, rather than at interpreter exit
        return code
    except BrokenPipeError:
        # Whoever read stdout has gone (`edge-irst info M | head`): no error of ours to report. stdout is pointed
        # at /dev/null so that the interpreter's last flush does not fail again, and the exit code is the one of a
        # tool ended by SIGPIPE (128 + 13), as a shell pipeline expects.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except EdgeIrstError as exc:
        print(f"edge-irst {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt as exc:  # "SIGTERM" where a command turned that into an interrupt (run)
        terminated = exc.args == ("SIGTERM",)
        print(f"edge-irst {args.command}: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130


if __name__ == "__main__":
    sys.exit(main())
