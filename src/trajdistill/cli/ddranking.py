"""`trajdistill evaluate --protocol ddranking`: DD-Ranking's scores of a set (ddranking.py)."""
from __future__ import annotations

from pathlib import Path

from .. import flags as kinds
from ..errors import ConfigError
from .common import given_strategy


DDRANKING_ONLY = ("real_accuracy", "real_epochs", "teacher", "lrs_lambda", "ars_lambda")


def refuse_ddranking_flags(o: dict) -> None:
    given = [f"--{k}" for k in DDRANKING_ONLY if o.get(k) is not None]
    if given:
        raise ConfigError(f"{', '.join(given)}: for --protocol ddranking only")


def evaluate_with_ddranking(o: dict, syn, splits) -> None:
    """--protocol ddranking: DD-Ranking's scores of the set (ddranking.py), written to
    --out or ddranking.json beside the set; a run directory's report is rebuilt with them."""
    from .. import ddranking as ddr
    from ..io import write_json
    from ..texture import spec_of
    if spec_of(syn.meta) is not None:
        raise ConfigError(f"--protocol ddranking: {o['syn']} is a texture set (canvases); "
                          "DD-Ranking evaluates whole images of the data's size")
    for flag in ("eval_mode", "lr_sweep"):  # the default pool, S, is one network: its own
        if o.get(flag) is not None and (flag != "eval_mode" or o["eval_mode"] != "S"):
            raise ConfigError(f"--{flag}: --protocol ddranking fixes its network and lr grid; drop it")
    lr = o.get("lr") or ["learned"]
    if len(lr) != 1:
        raise ConfigError(f"--lr: DD-Ranking trains at one lr (its syn_lr), got {len(lr)}")
    if o.get("dsa") is False:
        raise ConfigError("--dsa False: DD-Ranking's scores compare with and without "
                          "augmentation themselves; drop it")
    cfg = ddr.DDRankingConfig(
        num_eval=o["num_eval"], epochs=o["epoch_eval_train"], batch=o["batch_train"],
        syn_lr=None if lr == ["learned"] else lr[0],
        lrs_lambda=ddr.LAMBDA if o.get("lrs_lambda") is None else o["lrs_lambda"],
        ars_lambda=ddr.LAMBDA if o.get("ars_lambda") is None else o["ars_lambda"],
        real_accuracy=None if o.get("real_accuracy") is None else o["real_accuracy"] / 100,
        real_epochs=o.get("real_epochs") or ddr.REAL_EPOCHS, device=o["device"], seed=o["seed"],
        **given_strategy(o))
    cfg.check()
    syn_dir = Path(o["syn"]).parent
    teacher = None
    if syn.soft_labels is not None:
        teacher = ddr.buffer_teacher(o.get("teacher") or _run_buffer(syn_dir), splits, o["device"])
    result = ddr.evaluate_ddranking(syn, splits, cfg, teacher, progress=not o.get("quiet"),
                                    say=None if o.get("quiet") else print)
    result["set"] = str(o["syn"])
    out = Path(o.get("out") or syn_dir / ddr.RESULTS_FILE)
    write_json(out, result)
    print("\n".join(ddr.summary_lines(result)))
    print(f"results: {out}")
    if out.parent == syn_dir and (syn_dir / "config.json").exists():  # a run directory
        from ..report import build_report
        print(f"report: {build_report(syn_dir)}")


def _run_buffer(run_dir: Path) -> str:
    """The expert buffer a run directory's set was distilled from (config.json's source)."""
    from ..io import load_json
    config = run_dir / "config.json"
    source = load_json(config).get("source") if config.exists() else None
    if not isinstance(source, dict) or not source.get("buffer_dir"):
        raise ConfigError("--teacher: a soft-label set is compared with random real images "
                          "labelled by the expert that labelled it; give its expert buffer")
    return source["buffer_dir"]


def add_ddranking_flags(p) -> None:
    p.add_argument("--protocol", choices=["trajdistill", "ddranking"],
                   help="trajdistill (default): this package's protocol; ddranking: "
                   "DD-Ranking's scores LRS (HLR, IOR) and ARS under its protocol, written to "
                   "ddranking.json beside the set (docs/ddranking.md)")
    p.add_argument("--real_accuracy", type=kinds.positive_float, metavar="PERCENT",
                   help="ddranking: the whole training set's hard-label accuracy, if known "
                   "(DD-Ranking's cache); default: measured every round")
    p.add_argument("--real_epochs", type=kinds.positive_int,
                   help="ddranking: epochs of the whole-training-set networks (default 200)")
    p.add_argument("--teacher", type=kinds.existing_dir, metavar="BUFFER_DIR",
                   help="ddranking, soft-label sets: the expert buffer whose first expert "
                   "labels the random real images (default: the run's own buffer)")
    p.add_argument("--lrs_lambda", type=kinds.non_negative_float,
                   help="ddranking: the weight w of IOR against HLR in LRS (default 0.5)")
    p.add_argument("--ars_lambda", type=kinds.non_negative_float,
                   help="ddranking: the weight of the gain with augmentation in ARS (default 0.5)")
