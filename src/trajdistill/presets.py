"""The published settings (algorithm.md section 9), by name: `--preset CIFAR10-ipc1`.

A preset fills the flags it names; flags given on the command line override it.
"""
from __future__ import annotations

from .errors import TrajdistillError

# No "Iteration": an STM run ends by its own stop (distill.default_iterations).
_STM_COMMON = {"expert_epochs": 1, "init_epoch": 1, "eval_it": 200,
               "max_duration": 1000, "sigma": 5.0, "lr_lr": 0.01}

_TABLE = [
    # dataset, ipc, syn_steps, lr_img, lr_teacher, extra
    ("CIFAR10", 1, 50, 1000, 0.01, {"zca": True}),
    ("CIFAR10", 10, 30, 1000, 0.01, {"zca": True}),
    ("CIFAR10", 50, 30, 1000, 0.01, {"zca": True}),
    ("CIFAR100", 1, 20, 1000, 0.01, {"zca": True}),
    ("CIFAR100", 10, 20, 1000, 0.01, {"zca": True}),
    ("GZoo2", 1, 50, 10000, 0.0001, {}),
    ("GZoo2", 10, 20, 10000, 0.0001, {}),
]

PRESETS: dict[str, dict] = {}
for _ds, _ipc, _steps, _lr_img, _lr_t, _extra in _TABLE:
    PRESETS[f"{_ds}-ipc{_ipc}"] = {"dataset": _ds, "ipc": _ipc, "syn_steps": _steps,
                                   "lr_img": _lr_img, "lr_teacher": [_lr_t], **_STM_COMMON, **_extra}
    if _ds == "GZoo2":  # the reference STM runs used the rotation-augmented set too
        PRESETS[f"GZoo2_aug-ipc{_ipc}"] = {**PRESETS[f"GZoo2-ipc{_ipc}"], "dataset": "GZoo2_aug"}

# DATM (Guo et al., ICLR 2024): original-MTT with learnable soft labels, samples the expert
# classifies correctly, the loss threshold and (where its config turns on sequential generation)
# difficulty-aligned windows. Values from NUS-HPC-AI-Lab/DATM configs/<dataset>/ConvIN/IPC<n>.yaml
# (CIFAR-10 IPC1 bdb24b3, IPC10 abf54f9, IPC50 1767559; CIFAR-100 IPC1 b1d4823, IPC10 7cfd266,
# IPC50 5cbeca6). Not carried over: ema_decay (an EMA of the images for evaluation) and
# num_eval 1. Their experts were trained for more epochs than our 50-epoch buffer preset:
# max_start_epoch + expert_epochs must fit the buffer (CIFAR-100 ipc50 needs 72 epochs).
_DATM_TABLE = [
    # dataset, ipc, syn_steps, expert_epochs, lr_img, lr_lr, batch_syn, lr_y, threshold,
    # min_start, current_max (None: no sequential generation), max_start, expansion_end, pix_init
    ("CIFAR10", 1, 80, 2, 100, 1e-7, 1000, 5.0, 1.1, 0, None, 4, None, "correct"),
    ("CIFAR10", 10, 80, 2, 100, 1e-5, 100, 2.0, 1.0, 0, 10, 20, 1000, "correct"),
    ("CIFAR10", 50, 80, 2, 1000, 1e-5, 500, 2.0, 1.0, 0, 20, 40, 2000, "correct"),
    ("CIFAR100", 1, 40, 3, 1000, 1e-5, 1000, 2.0, 1.0, 0, None, 30, None, "correct"),
    ("CIFAR100", 10, 80, 2, 1000, 1e-5, 1000, 10.0, 1.0, 0, 30, 50, 2000, "correct"),
    ("CIFAR100", 50, 80, 2, 1000, 1e-5, 1000, 10.0, 1.0, 20, None, 70, None, "real"),
]
for (_ds, _ipc, _steps, _ee, _lr_img, _lr_lr, _bsyn, _lr_y, _thr, _min, _cur, _max, _exp,
     _pix) in _DATM_TABLE:
    PRESETS[f"DATM-{_ds}-ipc{_ipc}"] = {
        "dataset": _ds, "ipc": _ipc, "method": "original-MTT", "syn_steps": _steps,
        "expert_epochs": _ee, "lr_img": _lr_img, "lr_teacher": [0.01], "lr_lr": _lr_lr,
        "batch_syn": min(_bsyn, 10 * _ipc if _ds == "CIFAR10" else 100 * _ipc),
        "soft_labels": True, "lr_y": _lr_y, "loss_threshold": _thr, "pix_init": _pix,
        "min_start_epoch": _min, "max_start_epoch": _max, "Iteration": 10000, "eval_it": 500,
        "zca": True,
        **({"start_schedule": "aligned", "current_max_start_epoch": _cur,
            "expansion_end_epoch": _exp} if _cur is not None else {})}

# --- galaxies (issue 14): gz1 (../shared/data/gz1, a flat folder + labels CSV) as elliptical /
# spiral / edge-on at 32 px, the central half of each cut-out. The data flags are filled, the
# folder is the user's: `--preset GZ1-ipc1 --dataset PATH/gz1`. Settings measured in
# docs/results.md ("Galaxies"): start at the class means, the synthetic lr from the buffer (lr_teacher auto),
# Adam on the images (a bounded step per pixel: the images stay close to the class means
# instead of drifting several times their norm) and the galaxy DSA.
GZ1_DATA = {"labels": "gz1_labels.csv", "id_column": "OBJID", "label_column": "CLASS",
            "classes": "0,1+2,3", "class_names": "elliptical,spiral,edge-on", "res": 32,
            "crop": "center-half"}
PRESETS["GZ1-ipc1"] = {**GZ1_DATA, "model": "ConvNetW32", "ipc": 1, "syn_steps": 20, "init_epoch": 1,
                       "pix_init": "mean", "lr_teacher": ["auto"], "img_optimizer": "adam",
                       "lr_img": 0.01, "dsa_strategy": "galaxy", "Iteration": 200,
                       "eval_it": 200, "epoch_eval_train": 500}

# Expert-training settings that go with them (section 9): 50 epochs, 10 experts for a demo,
# the reference's batch of 256 (given, so that it is not derived from the data's size).
BUFFER_PRESETS = {
    "CIFAR10": {"dataset": "CIFAR10", "model": "ConvNet", "train_epochs": 50, "num_experts": 10,
                "lr_teacher": [0.01], "zca": True, "batch_train": 256},
    "CIFAR100": {"dataset": "CIFAR100", "model": "ConvNet", "train_epochs": 50, "num_experts": 10,
                 "lr_teacher": [0.01], "zca": True, "batch_train": 256},
    "GZoo2": {"dataset": "GZoo2", "model": "ConvNet", "train_epochs": 50, "num_experts": 10,
              "lr_teacher": [0.001], "batch_train": 256},
    "GZoo2_aug": {"dataset": "GZoo2_aug", "model": "ConvNet", "train_epochs": 50,
                  "num_experts": 10, "lr_teacher": [0.001], "batch_train": 256},
    "GZ1": {**GZ1_DATA, "model": "ConvNetW32", "train_epochs": 15, "num_experts": 3,
            "lr_teacher": [0.01], "batch_train": 64, "dsa_strategy": "galaxy"},
}


class PresetError(TrajdistillError):
    pass


def preset(name: str, table: dict[str, dict] = PRESETS) -> dict:
    if name not in table:
        raise PresetError(f"unknown preset {name!r}; known: {', '.join(sorted(table))}")
    return dict(table[name])
