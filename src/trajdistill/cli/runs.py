"""What a run leaves behind: `trajdistill report` (rebuild its report), `export` (a set as
PNGs and tensors) and `demo` (the whole pipeline on the embedded digits)."""
from __future__ import annotations

from pathlib import Path

from .. import flags as kinds
from ..errors import ConfigError
from ..precision import AUTOCAST_DTYPES
from .common import DATA_OPTIONS, add_folder_flags, load_splits


RUN_FILES = ("config.json", "metrics.jsonl", "results.json", "synthetic_best.pt", "synthetic_last.pt")


def cmd_report(args) -> None:
    from ..report import build_report
    if not any((Path(args.run_dir) / name).is_file() for name in RUN_FILES):
        raise ConfigError(f"{args.run_dir} is not a run directory: it holds none of "
                          f"{', '.join(RUN_FILES)}")
    splits = None
    if args.dataset:
        from ..synthetic import SyntheticSet
        run = Path(args.run_dir)
        found = [run / n for n in ("synthetic_best.pt", "synthetic_last.pt") if (run / n).exists()]
        syn = SyntheticSet.load(found[0]) if found else None
        zca = args.zca if args.zca is not None or syn is None else bool(syn.data.get("zca"))
        splits = load_splits({"dataset": args.dataset, "data_path": args.data_path,
                              "subset": args.subset, "zca": zca,
                              **{k: getattr(args, k) for k in DATA_OPTIONS}})
        why = syn.mismatch(splits.image_shape, splits.classes) if syn is not None else None
        if why:
            raise ConfigError(f"--dataset {args.dataset}: {why} ({found[0]})")
    print(build_report(args.run_dir, splits=splits))


def cmd_export(args) -> None:
    from ..export import export_ddranking, export_synthetic
    if args.format == "ddranking":
        out = export_ddranking(args.syn, args.out_dir)
        print(f"exported {args.syn} to {out} for DD-Ranking (images.pt, hard_labels.pt, "
              "labels.pt for soft labels, lr.pt, image_folder/, ddranking_config.json, "
              "metadata.json, README.txt)")
        return
    out = export_synthetic(args.syn, args.out_dir)
    print(f"exported {args.syn} to {out} (images/, grid.png, synthetic.pt, metadata.json, README.txt)")


def cmd_demo(args) -> None:
    from ..demo import DemoConfig, run_demo
    cfg = DemoConfig(device=args.device or "cpu", autocast=args.autocast)
    if args.iterations:
        cfg.iterations = args.iterations
    run_demo(args.run_dir, cfg, progress=not args.quiet)


def add_report_parser(sub) -> None:
    """The `report` subcommand."""
    p = sub.add_parser("report", help="(re)build the report of a run directory")
    p.add_argument("run_dir", type=kinds.writable_dir)
    p.add_argument("--dataset", type=kinds.non_empty,
                   help="the run's dataset: adds synthetic vs class mean vs real images")
    p.add_argument("--data_path", type=kinds.non_empty)
    p.add_argument("--subset", type=kinds.non_empty)
    add_folder_flags(p)
    p.add_argument("--zca", action="store_true", default=None,
                   help="(default: as the synthetic set was made)")
    p.set_defaults(func=cmd_report)


def add_export_parser(sub) -> None:
    """The `export` subcommand."""
    p = sub.add_parser("export", help="a distilled set as PNGs per class + a tensor file + README")
    p.add_argument("syn", type=kinds.existing_file,
                   help="a synthetic set file (RUN_DIR/synthetic_best.pt)")
    p.add_argument("out_dir", type=kinds.output_dir)
    p.add_argument("--format", choices=["trajdistill", "ddranking"], default="trajdistill",
                   help="trajdistill (default): PNGs, synthetic.pt, README; ddranking: the "
                   "tensors DD-Ranking's evaluators take (docs/ddranking.md)")
    p.set_defaults(func=cmd_export)


def add_demo_parser(sub) -> None:
    """The `demo` subcommand."""
    p = sub.add_parser("demo", help="the whole pipeline on the embedded digits, in minutes")
    p.add_argument("--run_dir", type=kinds.output_dir, default="runs/demo")
    p.add_argument("--iterations", type=kinds.positive_int)
    p.add_argument("--device", type=kinds.device, default=None)
    p.add_argument("--autocast", choices=list(AUTOCAST_DTYPES), default="off",
                   help="bf16: the distillation's forward passes in bfloat16 (see distill --help)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_demo)
