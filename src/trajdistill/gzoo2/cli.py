"""`trajdistill gzoo2 build ...`: the command-line face of build_gzoo2.

The main CLI calls add_gzoo2_parser(subparsers) and then args.func(args); the function
stored here needs nothing else from the main CLI.
"""
from __future__ import annotations

import argparse
import sys
import warnings

from .. import flags as kinds
from ..errors import TrajdistillError, one_line_warning


def add_gzoo2_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("gzoo2", help="Galaxy Zoo 2: build the curated GZoo2 / GZoo2_aug datasets",
                              description="Galaxy Zoo 2 tools (docs/algorithm.md section 7).")
    sub = p.add_subparsers(dest="gzoo2_command", metavar="{build}")
    sub.required = True
    b = sub.add_parser(
        "build", help="build a dataset directory from the catalog and the cut-outs",
        description="Label every catalog galaxy by its most confident class of the simplified "
                    "tree, keep the most confident per class (skipping galaxies without an image), "
                    "split test/train with a fixed seed and write uint8 arrays + manifest.json.")
    b.add_argument("--catalog", required=True, type=kinds.existing_file,
                   help="GZ2 table (CSV, CSV.gz or FITS) with dr7objid or objid and the vote columns")
    b.add_argument("--images", required=True, type=kinds.existing_dir,
                   help="folder of 424x424 cut-outs <objid>.jpg or <asset_id>.jpg")
    b.add_argument("--mapping", default=None, type=kinds.existing_file,
                   help="gz2_filename_mapping.csv (objid, sample, asset_id) when images are named by asset_id")
    b.add_argument("--out", required=True, type=kinds.output_dir,
                   help="output dataset directory (e.g. DATA/GZoo2_aug)")
    b.add_argument("--per-class", type=kinds.positive_int, default=None,
                   help="galaxies kept per class (default 600; 100 with --tree 10)")
    b.add_argument("--test-per-class", type=kinds.positive_int, default=None,
                   help="of those, test galaxies (default 100; 20 with --tree 10)")
    b.add_argument("--aug", type=kinds.positive_int, default=10,
                   help="copies of each training image, rotated by multiples of 360/aug degrees "
                        "(10: GZoo2_aug; 1: GZoo2)")
    b.add_argument("--votes", choices=["fraction", "debiased"], default="fraction",
                   help="vote columns to multiply: plain _fraction (reference) or _debiased")
    b.add_argument("--seed", type=kinds.non_negative_int, default=0,
                   help="shuffle seed of the test/train split")
    b.add_argument("--size", type=kinds.positive_int, default=128, help="output image size in pixels")
    b.add_argument("--tree", type=int, choices=[9, 10], default=9,
                   help="9 classes, or 10 with star/artifact (the earlier sub-dataset)")
    b.add_argument("--workers", type=kinds.positive_int, default=None,
                   help="decoding threads (output does not depend on it)")
    b.add_argument("--examples", type=kinds.non_negative_int, default=8,
                   help="galaxies per class in montage.png")
    b.add_argument("--no-progress", action="store_true", help="no progress bars")
    b.add_argument("--quiet", action="store_true", help="no summary table")
    b.set_defaults(func=run_build)
    return p


def run_build(args: argparse.Namespace) -> int:
    from .build import build_gzoo2

    try:
        with warnings.catch_warnings():
            # every unfilled class is reported (not just the first), as one plain line
            warnings.simplefilter("always")
            warnings.showwarning = one_line_warning
            build_gzoo2(args.catalog, args.images, args.out, mapping=args.mapping,
                        per_class=args.per_class, test_per_class=args.test_per_class, aug=args.aug,
                        votes=args.votes, seed=args.seed, size=args.size, tree=args.tree,
                        workers=args.workers, examples=args.examples,
                        progress=not args.no_progress, verbose=not args.quiet)
    except TrajdistillError as e:
        # as the main CLI reports errors: one line, exit status 2, no traceback (anything else
        # is a bug and keeps its traceback)
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        raise SystemExit(2) from None
    return 0
