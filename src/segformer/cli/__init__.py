"""SegFormer semantic segmentation: inspect, convert, (pre)train, evaluate, predict, export, benchmark, demo, app, push.

A thin command line over the library: each verb module has `add_arguments` and `run`, and imports heavy things
inside `run` so that `segformer --help` stays fast.
"""

from __future__ import annotations

import argparse
import logging
import sys

from . import app as app_cmd
from . import benchmark as benchmark_cmd
from . import convert, info
from . import data as data_cmd
from . import demo as demo_cmd
from . import erf as erf_cmd
from . import evaluate as eval_cmd
from . import export as export_cmd
from . import predict as predict_cmd
from . import pretrain as pretrain_cmd
from . import push as push_cmd
from . import synth as synth_cmd
from . import train as train_cmd

COMMANDS = {
    "info": info,
    "convert": convert,
    "train": train_cmd,
    "pretrain": pretrain_cmd,
    "eval": eval_cmd,
    "erf": erf_cmd,
    "data": data_cmd,
    "predict": predict_cmd,
    "synth": synth_cmd,
    "demo": demo_cmd,
    "export": export_cmd,
    "benchmark": benchmark_cmd,
    "app": app_cmd,
    "push": push_cmd,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="segformer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="verb", required=True, metavar="VERB")
    for verb, module in COMMANDS.items():
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(verb, help=doc.splitlines()[0] if doc else None, description=doc)
        module.add_arguments(p)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        return int(COMMANDS[args.verb].run(args) or 0)
    except (ValueError, OSError, KeyError, RuntimeError) as e:
        print(f"segformer {args.verb}: error: {one_line(e)}", file=sys.stderr)
        return 2


def one_line(error: BaseException) -> str:
    """The message of an error as the last line of a command: a KeyError without quotes, an OSError with its file
    (`[Errno 28] No space left on device: 'x'` -> `x: No space left on device`)."""
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, OSError) and error.strerror:
        where = error.filename if error.filename is not None else None
        return f"{where}: {error.strerror}" if where is not None else error.strerror
    return str(error)
