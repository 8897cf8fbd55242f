"""`trajdistill buffer`: train the expert trajectories."""
from __future__ import annotations

import sys

from .. import flags as kinds
from ..distributed import init_from_env, shutdown
from ..errors import ConfigError
from ..experts import buffer_dir
from ..presets import BUFFER_PRESETS
from .common import add_data_flags, add_train_flags, given_strategy, load_splits, resolve


BUFFER_PATH = "./buffers"


def buffer_defaults() -> dict:
    """ExpertConfig's own defaults (--model and --batch_train: None, derived from the data)."""
    from ..experts import ExpertConfig
    d = ExpertConfig()
    return {"train_epochs": d.train_epochs, "num_experts": d.num_experts,
            "lr_teacher": [d.lr_teacher], "mom": d.mom, "l2": d.l2, "dsa": d.dsa,
            "decay": d.decay, "seed": d.seed, "buffer_path": BUFFER_PATH}


def cmd_buffer(args) -> None:
    from ..experts import ExpertConfig, train_experts
    o = resolve(args, buffer_defaults(), BUFFER_PRESETS)
    if len(o["lr_teacher"]) != 1:
        raise ConfigError(f"--lr_teacher: experts train with one lr, got {len(o['lr_teacher'])}")
    splits = load_splits(o)
    comm, device = init_from_env(o["device"])  # torchrun: each rank trains its share
    rank, world = comm.rank, comm.world
    cfg = ExpertConfig(model=o.get("model"), train_epochs=o["train_epochs"],
                       num_experts=o["num_experts"], lr_teacher=float(o["lr_teacher"][0]),
                       mom=o["mom"], l2=o["l2"], batch_train=o.get("batch_train"), dsa=o["dsa"],
                       dsa_strategy=given_strategy(o).get("dsa_strategy"),
                       decay=o["decay"], seed=o["seed"], device=device).resolve(splits)
    out = buffer_dir(o["buffer_path"], o["dataset"], cfg.model, bool(o.get("zca")), o.get("subset"),
                     o.get("res"))
    if rank == 0 and cfg.derived:
        for name, d in cfg.derived.items():
            print(f"derived --{name} {d['value']}: {d['from']}", file=sys.stderr)
    store = train_experts(splits, cfg, out, rank=rank, world_size=world, progress=not o.get("quiet"))
    shutdown(comm)
    if rank == 0:
        accs = [store.summary(i)["test_accuracy"] for i in store.indices()]
        print(f"{len(accs)} experts in {out}; test accuracy "
              f"{100 * sum(accs) / len(accs):.2f} % (mean)")


def add_buffer_parser(sub) -> None:
    """The `buffer` subcommand and its flags."""
    p = sub.add_parser("buffer", help="train expert trajectories")
    add_data_flags(p)
    add_train_flags(p)
    p.add_argument("--preset", type=kinds.non_empty,
                   help=f"expert settings: {', '.join(sorted(BUFFER_PRESETS))}")
    d = buffer_defaults()
    p.add_argument("--train_epochs", type=kinds.positive_int,
                   help=f"epochs of each expert's trajectory (default {d['train_epochs']})")
    p.add_argument("--num_experts", type=kinds.positive_int,
                   help=f"experts to train (default {d['num_experts']}); a re-run adds the missing ones")
    p.add_argument("--lr_teacher", type=kinds.positive_float, nargs="+",
                   help=f"the experts' SGD lr (default {d['lr_teacher'][0]})")
    p.add_argument("--mom", type=kinds.non_negative_float,
                   help=f"the experts' SGD momentum (default {d['mom']})")
    p.add_argument("--l2", type=kinds.non_negative_float,
                   help=f"the experts' weight decay (default {d['l2']})")
    p.add_argument("--decay", action="store_true", default=None,
                   help="divide the experts' lr by 10 just past half-way through training")
    p.add_argument("--buffer_path", type=kinds.output_dir,
                   help=f"where buffers go: BUFFER_PATH/DATASET/MODEL (default {BUFFER_PATH})")
    p.set_defaults(func=cmd_buffer)
