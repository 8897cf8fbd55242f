"""Which start epoch each distillation iteration matches (algorithm.md sections 2 and 3).

`UniformStart` is MTT: t uniform in [0, max_start_epoch).
`AlignedStart` is DATM's difficulty-aligned window: t uniform in [min_start_epoch, upper),
upper growing linearly from current_max_start_epoch to max_start_epoch over
expansion_end_epoch iterations.
`StageMachine` is STM: a cap c on the start epoch that rises when a statistical test on the
held-out next-epoch losses says the images have learned what epochs < c can teach; its
window counts from min_start_epoch: t in [min_start_epoch, min_start_epoch + c).
All are pure state machines fed numbers, so they are tested without any network. Each
`start_epoch(it, rng, slot, slots)` is the draw of slot `slot` of an iteration's meta-batch
of `slots` trajectories (meta_batch.py); one slot per iteration is MTT's and STM's own.
"""
from __future__ import annotations

import math
import random
from dataclasses import asdict, dataclass, field


def pearson_with_index(values: list[float]) -> float:
    """Pearson correlation of values with 0..n-1 (0 for a constant sequence)."""
    n = len(values)
    mx = (n - 1) / 2
    my = sum(values) / n
    sxy = sum((i - mx) * (v - my) for i, v in enumerate(values))
    sxx = sum((i - mx) ** 2 for i in range(n))
    syy = sum((v - my) ** 2 for v in values)
    return 0.0 if syy == 0 else sxy / math.sqrt(sxx * syy)


@dataclass
class UniformStart:
    """MTT: every iteration draws its start epoch uniformly from
    [min_start_epoch, max_start_epoch) (min_start_epoch 0 is MTT itself)."""

    max_start_epoch: int
    min_start_epoch: int = 0

    def start_epoch(self, it: int, rng: random.Random, slot: int = 0, slots: int = 1) -> int:
        return rng.randrange(self.min_start_epoch, self.max_start_epoch)

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        self.max_start_epoch = d["max_start_epoch"]
        self.min_start_epoch = d.get("min_start_epoch", 0)


@dataclass
class AlignedStart:
    """DATM: t uniform in [min_start_epoch, upper(it)), where
    upper(it) = current_max_start_epoch + floor((max_start_epoch - current_max_start_epoch)
                                                * it / expansion_end_epoch),
    capped at max_start_epoch: easy (early) trajectories first, harder ones added over time."""

    min_start_epoch: int
    current_max_start_epoch: int
    max_start_epoch: int
    expansion_end_epoch: int

    def __post_init__(self):
        if not 0 <= self.min_start_epoch < self.current_max_start_epoch <= self.max_start_epoch:
            raise ValueError("aligned windows need 0 <= min_start_epoch < current_max_start_epoch "
                             f"<= max_start_epoch, got {self.min_start_epoch}, "
                             f"{self.current_max_start_epoch}, {self.max_start_epoch}")
        if self.expansion_end_epoch < 1:
            raise ValueError(f"expansion_end_epoch must be >= 1, got {self.expansion_end_epoch}")

    def upper(self, it: int) -> int:
        grown = (self.max_start_epoch - self.current_max_start_epoch) * it // self.expansion_end_epoch
        return min(self.current_max_start_epoch + grown, self.max_start_epoch)

    def start_epoch(self, it: int, rng: random.Random, slot: int = 0, slots: int = 1) -> int:
        return rng.randrange(self.min_start_epoch, self.upper(it))

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, v)


@dataclass
class StageEvent:
    """What one `record` call decided (logged every iteration)."""

    heldout: float
    cap: int
    n: int
    r: float | None = None           # correlation, when the test ran
    threshold: float | None = None   # -sigma * s: r below it passes
    rise_threshold: float | None = None  # 3 s: r above it means over-fitting
    passed: bool = False
    reset: bool = False              # H was cleared (a stage ended)
    level_up: bool = False           # ... and the cap rose
    fine_tuning_started: bool = False


@dataclass
class StageMachine:
    """STM's stage state: cap c, held-out history H, passed / fine-tuning flags, image lr."""

    max_start_epoch: int
    init_epoch: int = 1
    sigma: float = 5.0
    min_duration: int = 20
    max_duration: int = 1000
    test_every: int = 10
    sample_method: str = "cycle"
    lr_img: float = 1000.0
    decay_every: int = 50
    decay_factor: float = 0.8
    stop_lr_img: float = 50.0
    min_start_epoch: int = 0         # the window [min, min + cap): the cap counts from here
    cap: int = field(init=False)
    history: list[float] = field(init=False, default_factory=list)
    passed: bool = field(init=False, default=False)
    fine_tuning: bool = field(init=False, default=False)
    fine_tuning_iters: int = field(init=False, default=0)
    finished: bool = field(init=False, default=False)

    def __post_init__(self):
        if not 1 <= self.init_epoch <= self.max_start_epoch - self.min_start_epoch:
            raise ValueError(f"init_epoch must be in [1, max_start_epoch - min_start_epoch="
                             f"{self.max_start_epoch - self.min_start_epoch}], got {self.init_epoch}")
        if self.sample_method not in ("cycle", "random"):
            raise ValueError(f"sample_method must be 'cycle' or 'random', got {self.sample_method!r}")
        self.cap = self.init_epoch

    # ------------------------------------------------------------------ per iteration
    def start_epoch(self, it: int, rng: random.Random, slot: int = 0, slots: int = 1) -> int:
        """cycle: the slots of all iterations count through the window in turn (slot `slot`
        of `slots` per iteration: count it * slots + slot); random: a uniform draw."""
        if self.sample_method == "cycle":
            return self.min_start_epoch + (it * slots + slot) % self.cap
        return self.min_start_epoch + rng.randrange(self.cap)

    @property
    def needs_heldout(self) -> bool:
        """The held-out loss is measured (before the update) until fine-tuning starts."""
        return not self.fine_tuning and not self.finished

    @property
    def heldout_epoch(self) -> int:
        """The epoch no update has used yet: the held-out loss starts there."""
        return self.min_start_epoch + self.cap

    def record(self, heldout: float) -> StageEvent:
        """Append a held-out loss; every `test_every` entries run the test of section 3."""
        self.history.append(float(heldout))
        n = len(self.history)
        event = StageEvent(heldout=float(heldout), cap=self.cap, n=n)
        if n % self.test_every or n < self.min_duration:
            return event
        s = math.sqrt(1.0 / (n - 2))
        r = pearson_with_index(self.history)
        event.r, event.threshold, event.rise_threshold = r, -self.sigma * s, 3 * s
        if not self.passed:
            if n > self.max_duration:
                self.fine_tuning = True
                event.fine_tuning_started = True
                return event
            self.passed = r < -self.sigma * s
        event.passed = self.passed
        if self.passed or r > 3 * s:
            self.history.clear()
            self.passed = False
            event.reset = True
            if self.min_start_epoch + self.cap + 1 <= self.max_start_epoch:
                self.cap += 1
                event.level_up = True
        return event

    def after_update(self) -> float:
        """Advance the fine-tuning clock; returns the image lr to use from now on."""
        if self.fine_tuning and not self.finished:
            self.fine_tuning_iters += 1
            if self.fine_tuning_iters % self.decay_every == 0:
                self.lr_img *= self.decay_factor
                if self.lr_img < self.stop_lr_img:
                    self.finished = True
        return self.lr_img

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, d: dict) -> None:
        for k, v in d.items():
            setattr(self, k, list(v) if k == "history" else v)
