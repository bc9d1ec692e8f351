"""Check a dataset before training: counts, missing and unreadable files, label values, class balance, fixes.

Example: segformer data check --dataset folder --data-root data/mine
Exit status: 0 clean, 1 problems found (each with the flag that fixes it), 2 bad arguments.
"""

from __future__ import annotations

import argparse

from .common import add_column_arguments, add_label_arguments


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..data.layouts import DATASET_NAMES

    sub = p.add_subparsers(dest="data_verb", required=True, metavar="ACTION")
    check = sub.add_parser(
        "check",
        help="scan every split and report problems, each with the flag that fixes it",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    check.add_argument("--dataset", choices=DATASET_NAMES, default="folder", help="dataset layout (default: folder)")
    check.add_argument("--data-root", required=True, help="dataset root (--dataset hf: hub id or local folder)")
    check.add_argument("--split", action="append", default=None, help="check only this split (repeatable)")
    check.add_argument("--num-classes", type=int, default=None, help="classes when there is no classes.txt")
    add_label_arguments(check)
    add_column_arguments(check)
    check.add_argument("--workers", type=int, default=None, help="decoding processes (default: one per CPU core)")
    check.add_argument(
        "--weights",
        choices=("enet", "median", "inverse"),
        default="enet",
        help="class-weight formula (default enet: 1/ln(1.02 + p))",
    )
    check.add_argument("--json", default=None, metavar="FILE", help="also write the whole report as JSON")
    check.add_argument(
        "--write-palette", default=None, metavar="FILE", help="colour masks: write the colours found as a CSV to edit"
    )
    check.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..data.check import check_dataset, write_palette_template
    from .common import label_convention

    for option, value in (("--json", args.json), ("--write-palette", args.write_palette)):
        if value is not None and not Path(value).expanduser().resolve().parent.is_dir():
            raise ValueError(f"{option} {value}: its folder does not exist")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers {args.workers} must be >= 0 (0 = decode in this process)")
    report = check_dataset(
        args.dataset,
        args.data_root,
        args.split,
        num_classes=args.num_classes,
        labels=label_convention(args),
        image_column=args.image_column,
        mask_column=args.mask_column,
        workers=args.workers,
        progress=not args.no_progress,
        weight_method=args.weights,
    )
    print(report.format())
    if args.json:
        print(f"wrote {report.write_json(args.json)}")
    if args.write_palette:
        print(f"wrote {write_palette_template(report, args.write_palette)} (rename the classes, keep one row each)")
    return 0 if report.ok else 1
