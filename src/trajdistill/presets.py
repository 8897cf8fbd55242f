"""The published settings (algorithm.md section 9), by name: `--preset CIFAR10-ipc1`.

A preset fills the flags it names; flags given on the command line override it.
"""
from __future__ import annotations

from .errors import TrajdistillError

_STM_COMMON = {"expert_epochs": 1, "init_epoch": 1, "Iteration": 10000, "eval_it": 200,
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

# Expert-training settings that go with them (section 9): 50 epochs, 10 experts for a demo.
BUFFER_PRESETS = {
    "CIFAR10": {"dataset": "CIFAR10", "model": "ConvNet", "train_epochs": 50, "num_experts": 10,
                "lr_teacher": [0.01], "zca": True},
    "CIFAR100": {"dataset": "CIFAR100", "model": "ConvNet", "train_epochs": 50, "num_experts": 10,
                 "lr_teacher": [0.01], "zca": True},
    "GZoo2": {"dataset": "GZoo2", "model": "ConvNet", "train_epochs": 50, "num_experts": 10,
              "lr_teacher": [0.001]},
    "GZoo2_aug": {"dataset": "GZoo2_aug", "model": "ConvNet", "train_epochs": 50,
                  "num_experts": 10, "lr_teacher": [0.001]},
}


class PresetError(TrajdistillError):
    pass


def preset(name: str, table: dict[str, dict] = PRESETS) -> dict:
    if name not in table:
        raise PresetError(f"unknown preset {name!r}; known: {', '.join(sorted(table))}")
    return dict(table[name])
