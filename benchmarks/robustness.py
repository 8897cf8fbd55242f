"""The default pipeline on every data set of ../shared/data, one JSON line per row (issue 21).

    OMP_NUM_THREADS=1 python benchmarks/robustness.py --work /tmp/robust --rows digits:1 gz1-32:1
    python benchmarks/robustness.py --list          # the rows it knows
    python benchmarks/robustness.py --folder flowers=PATH/flower_photos --rows flowers:1
                                                    # any image folder, at --folder_res 32 px

A row is a data set at one ipc. It runs the command line as a new user would, naming only the
data (and its data flags), the resolution, ipc and a budget:

    trajdistill buffer  --dataset D [data flags] --num_experts E --train_epochs T
    trajdistill distill --dataset D [data flags] --ipc K --Iteration I --eval_it I

and reads what the run wrote: final.json (the chosen set, the class mean and random real images
of the same size, each at the lr of --eval_lrs that scored best on the validation split; the
distilled set's learned lr competes too) and the experts' test accuracy (networks trained on all
the training images: the "full data" column, at the experts' own settings, not an lr sweep).
Evaluation: --num_eval networks x --eval_epochs epochs per set and lr (random real since session
17: each network its own draw, at the lr best on validation for that draw; `draws` and `lrs` in
the row). Everything else is the tool's default; the
derived settings are copied from config.json into the row.

A row measured before the per-network draws keeps its one-draw random real; the same baseline
under today's protocol needs no distillation (the distilled set and the class mean do not change):

    trajdistill baseline --kind random [data flags] --ipc K --num_eval 5 --epoch_eval_train 500 --seed S

A row that is not the defaults names its extra flags and a tag (its run directory, log and
buffer folder are its own): --tag gal --buffer_args '--dsa_strategy galaxy' --distill_args
--dsa_strategy galaxy (--distill_args takes everything after it).
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import trajdistill
from trajdistill import flags as kinds
from trajdistill.experts import TrajectoryStore
from trajdistill.verdict import EVAL_LRS

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
GZ1 = ["--labels", "gz1_labels.csv", "--id_column", "OBJID", "--label_column", "CLASS",
       "--classes", "0,1+2,3", "--class_names", "elliptical,spiral,edge-on", "--crop",
       "center-half"]

# name: (data flags, without --res / --ipc)
DATASETS = {
    "digits": ["--dataset", "digits"],
    "cifar10": ["--dataset", "CIFAR10", "--data_path", str(DATA / "cifar10-subset")],
    "fashion": ["--dataset", str(DATA / "fashion-mnist")],
    "eurosat-32": ["--dataset", str(DATA / "eurosat-rgb"), "--res", "32"],
    "eurosat-64": ["--dataset", str(DATA / "eurosat-rgb")],
    "gz1-32": ["--dataset", str(DATA / "gz1"), *GZ1, "--res", "32"],
    "gz1-64": ["--dataset", str(DATA / "gz1"), *GZ1, "--res", "64"],
    "gz1-128": ["--dataset", str(DATA / "gz1"), *GZ1, "--res", "128"],
    # Stand-ins for folders the defaults were never looked at on: another galaxy task (two
    # classes, 1 : 2.5 imbalanced, like the "spiral vs not") and a tiny JPEG image
    # folder (20 training images per class, as a user's first try often is).
    "gz1-spiral": ["--dataset", str(DATA / "gz1"), *GZ1[:6], "--classes", "1+2,0+3+4+5",
                   "--class_names", "spiral,other", "--crop", "center-half", "--res", "32"],
    "cifar10-folder": ["--dataset", str(DATA / "cifar10-imagefolder")],
}
# Rows whose buffer would share a folder name with another row's (same data and side,
# other classes): their experts live in a buffer path of their own.
OWN_BUFFERS = {"gz1-spiral"}
# Two-class stand-ins for a user's imbalanced folder (the chest X-rays are 1 : 2.9):
# one class of a shared folder against three others merged, 1 : 3, at 32 px as an unseen
# folder is run. Built under --work as class folders of links: name -> (source, {new class:
# source classes}).
MERGED = {
    "fashion-shirt": (DATA / "fashion-mnist",
                      {"shirt": ["shirt"], "other-tops": ["t-shirt_top", "pullover", "coat"]}),
    "eurosat-river": (DATA / "eurosat-rgb",
                      {"river": ["River"], "other": ["Highway", "Forest", "SeaLake"]}),
}


def merged_folder(name: str, work: Path) -> list[str]:
    """The data flags of a MERGED row, its folder of links built under work/folders/ first."""
    source, groups = MERGED[name]
    root = work / "folders" / name
    for split in ("train", "test"):
        for group, classes in groups.items():
            folder = root / split / group
            folder.mkdir(parents=True, exist_ok=True)
            for cls in classes:
                for f in sorted((source / split / cls).iterdir()):
                    link = folder / f"{cls}-{f.name}"
                    if not link.exists():
                        link.symlink_to(f)
    return ["--dataset", str(root), "--res", "32"]


def run(cmd: list[str], log: Path) -> None:
    with open(log, "a") as out:
        out.write("$ " + " ".join(cmd) + "\n")
        out.flush()
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"error: {' '.join(cmd[:3])} ... failed ({code}); see {log}")


def row(name: str, ipc: int, args) -> dict:
    work = Path(args.work)
    data = merged_folder(name, work) if name in MERGED else DATASETS[name]
    tag = f"{name}-ipc{ipc}" + (f"-{args.tag}" if args.tag else "")
    buffers = work / ("buffers-" + name if name in OWN_BUFFERS else "buffers")
    if args.buffer_args:  # experts of their own making: their own folder
        buffers = work / f"buffers-{name}-{args.tag}"
    run_dir = work / "runs" / tag
    log = work / f"{tag}.log"
    work.mkdir(parents=True, exist_ok=True)
    exe = [sys.executable, "-m", "trajdistill.cli"]
    t0 = time.perf_counter()
    run([*exe, "buffer", *data, "--num_experts", str(args.num_experts), "--train_epochs",
         str(args.train_epochs), "--buffer_path", str(buffers), "--quiet", *args.buffer_args],
        log)
    t1 = time.perf_counter()
    if run_dir.exists() and not (run_dir / "final.json").exists():
        subprocess.call(["rm", "-rf", str(run_dir)])
    if not (run_dir / "final.json").exists():
        run([*exe, "distill", *data, "--ipc", str(ipc), "--Iteration", str(args.iterations),
             "--eval_it", str(args.iterations), "--num_eval", str(args.num_eval),
             "--epoch_eval_train", str(args.eval_epochs), "--eval_lrs", *map(str, args.eval_lrs),
             "--buffer_path", str(buffers), "--run_dir", str(run_dir), "--quiet",
             *args.distill_args], log)
    t2 = time.perf_counter()
    final = json.loads((run_dir / "final.json").read_text())
    config = json.loads((run_dir / "config.json").read_text())
    bdir = Path(config["source"]["buffer_dir"])
    store = TrajectoryStore.open(bdir)
    accs = [store.summary(i)["test_accuracy"] for i in store.indices()]
    sets = final["sets"]
    pick = lambda key: next(v for k, v in sets.items() if k.startswith(key))  # noqa: E731
    out = {"row": name, "ipc": ipc, "tag": args.tag, "model": final["model"],
           "distill_args": args.distill_args, "buffer_args": args.buffer_args,
           "derived": {k: d["value"] for k, d in config.get("derived", {}).items()},
           "distilled": _fig(sets["distilled"]), "class_mean": _fig(pick("class mean")),
           "random_real": _fig(pick("random real")),
           "full_data_experts": sum(accs) / len(accs), "experts": accs,
           "at_learned_lr": sets["distilled"].get("learned"), "beats_all": final["beats_all"],
           "message": final["message"], "budget": {
               "num_experts": args.num_experts, "train_epochs": args.train_epochs,
               "iterations": args.iterations, "num_eval": args.num_eval,
               "eval_epochs": args.eval_epochs, "eval_lrs": args.eval_lrs},
           "seconds": {"buffer": round(t1 - t0, 1), "distill_and_compare": round(t2 - t1, 1)},
           "commit": source_commit()}
    start = [v for k, v in sets.items() if k.startswith("its start")]
    if start:
        out["start"] = _fig(start[0])
    return out


def random_real_row(name: str, ipc: int, args) -> dict:
    """`--random_real_only`: a row's random-real baseline alone (no experts, no distillation:
    the figure depends on the data, ipc, the seed and the evaluation budget only), as
    `trajdistill baseline --kind random` gives it: the same draws, networks and lrs as a
    run's final comparison with the same seed (tests/test_verdict.py pins that)."""
    work = Path(args.work)
    data = merged_folder(name, work) if name in MERGED else DATASETS[name]
    seed = args.random_real_only
    out_file = work / "random-real" / f"{name}-ipc{ipc}-seed{seed}.json"
    out_file.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "trajdistill.cli", "baseline", "--kind", "random", *data,
           "--ipc", str(ipc), "--num_eval", str(args.num_eval), "--epoch_eval_train",
           str(args.eval_epochs), "--seed", str(seed), "--quiet", "--out", str(out_file)]
    t0 = time.perf_counter()
    run(cmd, work / f"random-real-{name}-ipc{ipc}-seed{seed}.log")
    result = json.loads(out_file.read_text())
    model = next(k for k, v in result.items() if isinstance(v, dict) and "mean" in v)
    return {"row": name, "ipc": ipc, "seed": seed, "kind": "random real only", "model": model,
            "random_real": _fig({**result[model], "draws": result["draws"]}),
            "budget": {"num_eval": args.num_eval, "eval_epochs": args.eval_epochs},
            "seconds": round(time.perf_counter() - t0, 1), "commit": source_commit()}


def source_commit() -> str | None:
    """The commit of the code that ran (the trajdistill package's checkout), "+" if its
    sources differ from it; None outside a git checkout."""
    src = Path(trajdistill.__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, text=True,
                              capture_output=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "."], cwd=src, text=True,
                               capture_output=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    return head + ("+" if dirty else "")


def _fig(r: dict) -> dict:
    """A set's figures; `draws` and `lrs` where each network trained on its own random
    draw at its own lr (`lr` is then their median)."""
    return {"test": r["mean"], "std": r["std"], "val": r["val_mean"], "lr": r["lr"],
            **{k: r[k] for k in ("draws", "lrs") if k in r}}


def _cell(fig: dict) -> str:
    """Test accuracy ± std (%) and, in brackets, the lr chosen on validation (random real
    over draws: the median of each network's own, marked "med.")."""
    lr = f"med. {fig['lr']:.2g}" if fig.get("lrs") else f"{fig['lr']:.2g}"
    return f"{100 * fig['test']:.1f} ± {100 * fig['std']:.1f} ({lr})"


def row_seed(r: dict) -> int:
    """The seed a row's distillation ran with (its --seed in distill_args, else 0)."""
    args = r.get("distill_args") or []
    return int(args[args.index("--seed") + 1]) if "--seed" in args else 0


def with_random_real(rows: list[dict], remeasured: list[dict]) -> list[dict]:
    """`rows` with random real replaced by a `--random_real_only` line of the same data,
    ipc and seed where there is one (the one-draw figure kept as `random_real_one_draw`)."""
    new = {(m["row"], m["ipc"], m["seed"]): m["random_real"] for m in remeasured}
    out = []
    for r in rows:
        key = (r["row"], r["ipc"], row_seed(r))
        if key in new and "draws" not in r["random_real"]:
            r = {**r, "random_real": new[key], "random_real_one_draw": r["random_real"]}
        out.append(r)
    return out


def table(rows: list[dict]) -> str:
    """The docs' table: test accuracy (%) at each set's lr chosen on validation."""
    lines = ["| data | ipc | model | distilled | class mean | random real | full data (experts) "
             "| distilled - mean | distilled - random |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        d, m, rr = r["distilled"], r["class_mean"], r["random_real"]
        name = r["row"] + (f" ({r['tag']})" if r.get("tag") else "")
        lines.append(f"| {name} | {r['ipc']} | {r['model']} | {_cell(d)} | {_cell(m)} | "
                     f"{_cell(rr)} | {100 * r['full_data_experts']:.1f} | "
                     f"{100 * (d['test'] - m['test']):+.1f} | {100 * (d['test'] - rr['test']):+.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", nargs="+", default=[f"{d}:{k}" for d in DATASETS for k in (1, 10)],
                   help="NAME:IPC (names: --list)")
    p.add_argument("--list", action="store_true")
    p.add_argument("--work", default="/tmp/trajdistill-robustness")
    p.add_argument("--out", help="append the JSON lines here too")
    p.add_argument("--num_experts", type=int, default=3)
    p.add_argument("--train_epochs", type=int, default=15)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--num_eval", type=int, default=5)
    p.add_argument("--eval_epochs", type=int, default=500)
    p.add_argument("--eval_lrs", type=float, nargs="+", default=list(EVAL_LRS))
    p.add_argument("--table", metavar="JSONL", type=kinds.existing_file,
                   help="print the table of a results file and stop")
    p.add_argument("--random_real", metavar="JSONL", type=kinds.existing_file,
                   help="with --table: random real from these --random_real_only lines where a "
                   "row of the same data, ipc and seed has one")
    p.add_argument("--distill_args", nargs=argparse.REMAINDER, default=[],
                   help="everything after it goes to `distill` as it is (a row that is not the "
                   "defaults: give --tag too, so its run directory is its own)")
    p.add_argument("--buffer_args", type=shlex.split, default=[], metavar="'FLAGS'",
                   help="extra flags for `buffer`, as one quoted string (--buffer_args "
                   "'--dsa_strategy galaxy'); give --tag too: the experts get a buffer path of "
                   "their own")
    p.add_argument("--folder", action="append", default=[], metavar="NAME=PATH",
                   help="a row NAME for an image folder of your own (train/<class>/ and "
                   "test/<class>/, or class folders only), run at --folder_res")
    p.add_argument("--folder_res", type=kinds.positive_int, default=32,
                   help="the side the --folder rows are resized to (default 32, as issue 21's "
                   "protocol for unseen folders)")
    p.add_argument("--tag", default="", help="appended (after a -) to each row's run directory and log name")
    p.add_argument("--random_real_only", type=kinds.seed, metavar="SEED",
                   help="measure only each row's random-real baseline with this seed (no experts, "
                   "no distillation): `trajdistill baseline --kind random`, the figure a run of "
                   "that seed compares with; for rows measured under an older protocol")
    args = p.parse_args()
    if args.random_real_only is not None and list(args.eval_lrs) != list(EVAL_LRS):
        p.error("--random_real_only uses the default --eval_lrs (the baseline command's grid)")
    if (args.buffer_args or args.distill_args) and not args.tag:
        p.error("--buffer_args / --distill_args make a row that is not the defaults: name it "
                "with --tag")
    for spec in args.folder:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_dir() or name in DATASETS or name in MERGED:
            p.error(f"--folder: expected NAME=PATH with a new NAME and an existing folder, "
                    f"got {spec!r}")
        DATASETS[name] = ["--dataset", str(Path(path).resolve()), "--res", str(args.folder_res)]
        OWN_BUFFERS.add(name)  # two folders may share a last name (.../a/train, .../b/train)
    if args.list:
        print("\n".join(f"{k}: {' '.join(v)}" for k, v in DATASETS.items()))
        print("\n".join(f"{k}: {src.name} as {' against '.join('+'.join(c) for c in groups.values())}"
                        " (built under --work/folders/), --res 32" for k, (src, groups) in MERGED.items()))
        return
    if args.random_real and not args.table:
        p.error("--random_real goes with --table (the table it fills in)")
    if args.table:
        def lines(flag: str, path: str) -> list[dict]:
            try:
                return [json.loads(line) for line in open(path) if line.strip()]
            except (ValueError, UnicodeDecodeError) as e:
                p.error(f"{flag}: {path} is not JSON lines written by --out ({e})")
        rows = lines("--table", args.table)
        try:
            if args.random_real:
                rows = with_random_real(rows, lines("--random_real", args.random_real))
            print(table(rows))
        except (KeyError, TypeError) as e:
            p.error(f"--table / --random_real: a line lacks {e} (expected this script's --out lines)")
        return
    rows = []
    for spec in args.rows:
        name, _, ipc = spec.partition(":")
        if (name not in DATASETS and name not in MERGED) or not ipc.isdigit():
            p.error(f"--rows: expected NAME:IPC with NAME one of {', '.join([*DATASETS, *MERGED])}, "
                    f"got {spec!r}")
        if args.random_real_only is not None:
            r = random_real_row(name, int(ipc), args)
            print(json.dumps(r), flush=True)
            if args.out:
                with open(args.out, "a") as f:
                    f.write(json.dumps(r) + "\n")
            continue
        r = row(name, int(ipc), args)
        rows.append(r)
        line = json.dumps(r)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    if rows:
        print(table(rows), file=sys.stderr)


if __name__ == "__main__":
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    main()
