"""The distillation loop: owns the learnables (learnables.py), schedule, checkpoints, logs.

One iteration (algorithm.md sections 2-3): draw the meta-batch's `num_trajectories` slots
(an expert and a start epoch each; meta_batch.py), and for each of this process's slots
measure STM's held-out next-epoch loss (no graph) and compute the matching gradient with
the chosen method (`lean` by default, `unroll` as reference); average losses and gradients
over the slots (one all-reduce across torchrun's ranks; distributed.py), step the images,
the lr(s) and the soft labels, feed the stage machine the mean held-out loss, log one JSON
line. An update that would start a divergence is refused and rolled back (guard.py). Every
rank holds the same state and takes the same decisions; rank 0 alone writes.

Around the loop, and not in it: the evaluations, the choice of the best set and the final
comparison (run_eval.py), the run's files (run_dir.py) and their records (records.py).
"""
from __future__ import annotations

import time
from dataclasses import asdict, fields, replace
from pathlib import Path

import torch

from . import progress as progress_out
from .data.base import DatasetSplits
from .distributed import SINGLE, Comm
from .errors import ConfigError
from .experts import BufferError, TrajectoryStore, open_buffer  # noqa: F401 (API)
from .gradient_choice import choose as choose_gradient, choose_compile
from .guard import DivergenceError, Guard, apply_or_roll_back, non_finite  # noqa: F401 (API)
from .distill_config import DistillConfig, default_iterations, resolve, stop_lr_img  # noqa: F401
from .initial import Labeller, RunStart, RunStudent, measure_teacher_lr, run_experts
from .learnables import Learnables
from .matching import (GRADIENT_METHODS, MatchProblem, kept_steps, matching_loss, plan_unroll,
                       step_kernel)
from .meta_batch import Combined, Slot, SlotResult, combine, draw_slots
from .pacing import DRIFT_LOW, drift, horizon, is_check, raise_factor
from .precision import AUTOCAST_DTYPES
from .schedule import AlignedStart, StageMachine, UniformStart
from .synthetic import SyntheticSet
from .records import slot_fields
from .run_dir import Log, RunDirectory
from .tracking import Tracker
from . import cuda_graphs, run_eval
from .validation import validation_indices

# /2: every random draw of an iteration comes from (seed, iteration, slot) (meta_batch.py),
# so the checkpoint no longer holds an expert cursor or generator states; a /1 checkpoint
# still loads (those entries are ignored, so its continuation draws differently).
CHECKPOINT_FORMAT = "trajdistill.checkpoint/2"
READABLE_FORMATS = ("trajdistill.checkpoint/1", CHECKPOINT_FORMAT)


def _short(value) -> str:
    """A derived value for one line: 0.002801, [0.0028] -> 0.0028, 'mean' -> mean."""
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return f"{value:.4g}" if isinstance(value, float) else str(value)


class Distiller:
    """The loop around one `Learnables`. `run()` distills; `state_dict()` is everything to
    resume."""

    def __init__(self, cfg: DistillConfig, splits: DatasetSplits, store: TrajectoryStore,
                 run_dir: str | Path, progress: bool = True, source: dict | None = None,
                 comm: Comm = SINGLE):
        self.comm = comm  # torchrun's ranks (distributed.py); SINGLE: this process alone
        # one student network for the start-up measurements and the run (initial.RunStudent)
        student = RunStudent(splits, store)
        start = RunStart(splits, store, student)  # the start, drawn once (initial.RunStart)
        self.cfg = cfg = resolve(  # a settled copy; the caller's is untouched
            cfg, splits, store,
            teacher_lr=lambda c, s, t: measure_teacher_lr(c, s, t, start),
            gradient=lambda c, s, t: choose_gradient(c, s, t, lambda: student(c)),
            compile_choice=lambda c, s, t: choose_compile(c, s, t, lambda: student(c)))
        if comm.active:  # every rank takes rank 0's measured choices (free memory differs)
            self.cfg = cfg = replace(cfg, **comm.broadcast_object(
                {"gradient": cfg.gradient, "compile": cfg.compile, "lr_teacher": cfg.lr_teacher,
                 "derived": cfg.derived}))
        self.source = source or {}  # where data and buffer came from (for --resume)
        self.splits, self.store, self.progress = splits, store, progress and comm.is_main
        self.run_dir = RunDirectory(run_dir, writer=comm.is_main)
        self.device = torch.device(cfg.device)
        self.student = student(cfg)
        self.experts = run_experts(cfg, store)
        self.val_idx = validation_indices(splits.train.labels, splits.num_classes, cfg.val_size)
        self.val = run_eval.validation_set(splits, self.val_idx)  # None without one
        self._start = start
        images, loaded_logits = start(cfg)
        for text in start.notes:
            self._note(text)
        # the start: each iteration's drift is measured from it, the verdict compares with it
        self.initial_images = images.detach().to(self.device)
        self.resumed = False  # set by `resume`: its logs are kept (cut back to the checkpoint)
        self._say_derived()
        # soft labels: learnable logits (N, classes), from a loaded set or the first expert
        logits = None
        if cfg.soft_labels:
            logits = (loaded_logits if loaded_logits is not None
                      else self._labeller().logits(self.initial_images))
        labels = torch.arange(splits.num_classes).repeat_interleave(cfg.ipc).to(self.device)
        self.learnables = Learnables(self.initial_images, labels, cfg.lr_teacher,
                                     img_optimizer=cfg.img_optimizer, lr_img=cfg.lr_img,
                                     lr_lr=cfg.lr_lr, label_logits=logits, lr_y=cfg.lr_y)
        self.schedule = self._start_schedule()
        self.iteration = cfg.prev_iter
        self.best = {"accuracy": -1.0, "iteration": None}
        self.lr_raised = 1.0  # the image lr's raises so far (pacing.py), multiplied
        self.guard = Guard(cfg.max_failures, cfg.loss_threshold, cfg.loss_warn_it, self._note)
        self.grad_fn = GRADIENT_METHODS[cfg.gradient]
        self._kept: int | None = None  # --gradient_memory's kept steps, once measured
        self._cuda_graphs = cuda_graphs.wanted(cfg.cuda_graphs, self.device.type, cfg.compile)
        # how every problem's steps are computed: its settings are the run's, so chosen once
        self.kernel = step_kernel(self.student, self.device.type, compile=cfg.compile,
                                  cuda_graphs=self._cuda_graphs,
                                  autocast=AUTOCAST_DTYPES[cfg.autocast],
                                  texture=cfg.texture_spec is not None)
        if self.kernel.name == "compiled":  # the first iteration stalls on the compilation
            self._note("torch.compile: the first iteration compiles the steps (a minute or two; "
                       "seconds with a warm inductor cache; --compile off skips it)")
        if comm.active:  # every rank starts from rank 0's state (identical by construction)
            self.load_state_dict(comm.broadcast_object(self.state_dict()), "rank 0's state")
            if cfg.num_trajectories < comm.world:
                self._note(f"note: --num_trajectories {cfg.num_trajectories} < {comm.world} "
                           f"processes: {comm.world - cfg.num_trajectories} rank(s) idle while "
                           "matching; give --num_trajectories a multiple of the process count")

    def _say_derived(self) -> None:
        """One line naming every derived setting (the full reasons are in config.json)."""
        if self.cfg.derived:
            self._note("derived settings: " + ", ".join(
                f"{k} {_short(d['value'])}" for k, d in self.cfg.derived.items()))

    def _note(self, text: str) -> None:
        """One line on stderr, from rank 0 only."""
        if self.comm.is_main:
            progress_out.note(text)

    def _start_schedule(self):
        """STM's stage machine (window from min_start_epoch), DATM's aligned window, or
        MTT's uniform draw."""
        cfg = self.cfg
        if cfg.stm:
            return StageMachine(cfg.max_start_epoch, cfg.init_epoch, cfg.sigma, cfg.min_duration,
                                cfg.max_duration, sample_method=cfg.sample_method,
                                lr_img=cfg.lr_img, min_start_epoch=cfg.min_start_epoch,
                                stop_lr_img=stop_lr_img(cfg))
        if cfg.start_schedule == "aligned":
            return AlignedStart(cfg.min_start_epoch, cfg.current_max_start_epoch,
                                cfg.max_start_epoch, cfg.expansion_end_epoch)
        return UniformStart(cfg.max_start_epoch, cfg.min_start_epoch)

    # ------------------------------------------------------------------ state
    def _labeller(self) -> Labeller:
        """The first expert's final epoch (soft labels, the start), loaded once."""
        return self._start.labeller_of(self.cfg)

    def lrs(self) -> list[float]:
        return self.learnables.lrs()

    def synthetic_set(self) -> SyntheticSet:
        syn = self.learnables
        soft = syn.label_logits.detach().cpu().clone() if syn.label_logits is not None else None
        return SyntheticSet(syn.images.detach().cpu().clone(), syn.labels.cpu(), syn.lrs(),
                            self.splits.preprocess, self.splits.describe(), self.store.model,
                            self.cfg.syn_steps, {"iteration": self.iteration,
                                                 "method": self.cfg.method,
                                                 "lr_mode": self.cfg.lr_mode,
                                                 "dsa_strategy": self.cfg.dsa_strategy,
                                                 **self._texture_meta()},
                            soft_labels=soft)

    def _texture_meta(self) -> dict:
        spec = self.cfg.texture_spec
        return {"texture": {"canvas_size": spec.canvas_size,
                            "canvas_samples": spec.canvas_samples}} if spec else {}

    def state_dict(self) -> dict:
        """Everything to resume: the learnables (learnables.py), the schedule, the best set so
        far, the guard's refusals in a row and the image lr's raises."""
        return {"format": CHECKPOINT_FORMAT, "iteration": self.iteration,
                **self.learnables.state_dict(), "schedule": self.schedule.state_dict(),
                "best": dict(self.best), "failures": self.guard.failures,
                "lr_raised": self.lr_raised}

    def load_state_dict(self, s: dict, source: str = "checkpoint") -> None:
        if not isinstance(s, dict) or s.get("format") not in READABLE_FORMATS:
            raise ConfigError(f"{source}: not a trajdistill distillation checkpoint")
        self.learnables.check(s, source)
        self.iteration = s["iteration"]
        self.learnables.load_state_dict(s, source)
        self.schedule.load_state_dict(s["schedule"])
        self.best = dict(s["best"])
        self.guard.failures = s.get("failures", 0)
        self.lr_raised = s.get("lr_raised", 1.0)

    @classmethod
    def resume(cls, run_dir: str | Path | RunDirectory, splits: DatasetSplits,
               store: TrajectoryStore, progress: bool = True, iterations: int | None = None,
               comm: Comm = SINGLE, device: str | None = None) -> "Distiller":
        """Continue a run from its last checkpoint; logs are cut back to that point.
        Under torchrun rank 0 reads the run directory and sends it to the other ranks."""
        files = run_dir if isinstance(run_dir, RunDirectory) else RunDirectory(run_dir)
        saved = comm.broadcast_object(files.config() if comm.is_main else None)
        names = {f.name for f in fields(DistillConfig)}
        cfg = DistillConfig(**{k: v for k, v in saved.items() if k in names})
        if iterations is not None:
            cfg.iterations = iterations
        if device is not None:  # torchrun on CUDA: this rank's own GPU
            cfg.device = device
        d = cls(cfg, splits, store, files.path, progress, source=saved.get("source"), comm=comm)
        d.resumed = True
        state = comm.broadcast_object(files.checkpoint() if comm.is_main else None)
        if state is not None:
            d.load_state_dict(state, str(files.checkpoint_path))
        else:
            d._note(f"{files.checkpoint_path} not written yet: starting {files} from the beginning")
        d.run_dir.cut_logs(d.iteration)
        return d

    # ------------------------------------------------------------------ one iteration
    def problem(self, trajectory: torch.Tensor, start_epoch: int,
                generator: torch.Generator) -> MatchProblem:
        """The matching problem of one slot: the student from `start_epoch` of `trajectory`
        towards expert_epochs later, on the current images, its plan drawn from `generator`."""
        cfg = self.cfg
        start = trajectory[start_epoch].to(self.device, torch.float32)
        target = trajectory[start_epoch + cfg.expert_epochs].to(self.device, torch.float32)
        n = self.learnables.images.shape[0]
        plan = plan_unroll(n, cfg.syn_steps, cfg.batch_syn or n, self.splits.image_shape[1:],
                           cfg.dsa_strategy if cfg.dsa and not cfg.no_aug else None, generator,
                           texture_spec=cfg.texture_spec)
        problem = MatchProblem(self.student, start, target, self.learnables.targets(), plan,
                               compile=cfg.compile, cuda_graphs=self._cuda_graphs,
                               autocast=AUTOCAST_DTYPES[cfg.autocast], kernel_choice=self.kernel)
        problem.keep_steps = self._keep_steps(problem)
        return problem

    def _keep_steps(self, problem: MatchProblem) -> int:
        """--gradient_memory: how many final steps keep their graphs, measured once (one
        step's saved tensors; every problem of a run has the same minibatch shapes)."""
        if not self.cfg.gradient_memory:
            return 0
        if self._kept is None:
            syn = self.learnables
            self._kept, per_step = kept_steps(self.cfg.gradient_memory, self.cfg.syn_steps,
                                              problem, syn.images, syn.log_lrs[0].exp())
            self._note(f"--gradient_memory {self.cfg.gradient_memory:g} GB: the last "
                       f"{self._kept} of {self.cfg.syn_steps} unrolled steps keep their graphs "
                       f"({per_step / 2**20:.0f} MB each); the lean walk recomputes the rest")
        return self._kept

    def _lr_index(self, start_epoch: int) -> int:
        """independent-lr: the lr of the start epoch's stage; global-lr: the one lr."""
        if self.cfg.lr_mode != "independent-lr":
            return 0
        return min(start_epoch - self.cfg.min_start_epoch, len(self.learnables.log_lrs) - 1)

    def _match_slot(self, slot: Slot, heldout: bool) -> SlotResult:
        """One trajectory of the meta-batch: STM's held-out loss (no graph; the plan drawn
        first) and the matching loss and gradients from the slot's start epoch."""
        trajectory, syn = self.store.load(slot.expert), self.learnables
        held, t0 = None, time.perf_counter()
        if heldout:
            held = matching_loss(self.problem(trajectory, self.schedule.heldout_epoch,
                                               slot.generator),
                                 syn.images, syn.log_lrs[-1].detach().exp())
        heldout_seconds = time.perf_counter() - t0
        k = self._lr_index(slot.start_epoch)
        result = self.grad_fn(self.problem(trajectory, slot.start_epoch, slot.generator),
                              syn.images, syn.log_lrs[k])
        return SlotResult(slot.index, result, held, k, heldout_seconds)

    def step(self) -> dict:
        """One iteration: choose the slots, match them, update under the guard, advance the
        schedule, record."""
        t0 = time.perf_counter()
        slots = draw_slots(self.schedule, self.experts, self.cfg.seed, self.iteration,
                           self.cfg.num_trajectories)
        heldout = self.cfg.stm and self.schedule.needs_heldout
        matched, record = self._match(slots, heldout)
        if self._guarded_update(matched, record):
            self._advance_schedule(record, matched, heldout)
        record["lrs"] = self.lrs()
        record["drift"] = self.drift()
        self._pace(record)
        record["seconds"] = time.perf_counter() - t0
        self.iteration += 1
        return record

    def drift(self) -> float:
        """How far the images have moved from their start (pacing.drift)."""
        return drift(self.learnables.images, self.initial_images)

    def _pace(self, record: dict) -> None:
        """A derived Adam image lr behind pacing.py's pace is raised (not in STM's fine-tuning,
        whose decay is its own); the raise goes into the record and the log."""
        cfg, done = self.cfg, self.iteration + 1
        if (not cfg.pace_lr_img or getattr(self.schedule, "fine_tuning", False)
                or not is_check(done, cfg.iterations)):
            return
        factor = raise_factor(done, cfg.iterations, record["drift"], self.lr_raised)
        if factor == 1.0:
            return
        self.lr_raised *= factor
        old = self.learnables.image_lr
        self.learnables.image_lr = old * factor
        if cfg.stm:  # the stage machine owns the image lr; its stop stays the same fraction
            self.schedule.lr_img *= factor
            self.schedule.stop_lr_img *= factor
        record.update(lr_img=old * factor, lr_img_raised=factor)
        self._note(f"it {done}: the images moved {record['drift']:.3f} of their norm, behind "
                   f"the pace to {DRIFT_LOW} by iteration {horizon(cfg.iterations)}: image lr "
                   f"{old:.3g} -> {old * factor:.3g} (--pace_lr_img false keeps it)")

    def _match(self, slots: list[Slot], heldout: bool) -> tuple[Combined, dict]:
        """This rank's share of the slots matched and combined over every rank (the same
        mean on each), and the iteration's record so far (records.py)."""
        parts = [self._match_slot(slots[m], heldout) for m in self.comm.my_share(len(slots))]
        syn = self.learnables
        matched = combine(parts, len(slots), len(syn.log_lrs), syn.images, syn.label_logits,
                          heldout, self.comm)
        record = {"it": self.iteration, **slot_fields(slots, matched)}
        if heldout:  # this rank's share
            record["heldout_seconds"] = sum(p.heldout_seconds for p in parts)
        record["loss"] = matched.loss
        return matched, record

    def _guarded_update(self, matched: Combined, record: dict) -> bool:
        """The optimisers' step with the guard around it (guard.py): no step on a non-finite
        result or a loss above --loss_threshold, rolled back when unsound; the refusal goes
        into the record. True when the update was kept."""
        self.guard.see_loss(self.iteration, matched.loss, self._first_loss_hint())
        trouble = non_finite(matched)
        if not trouble and not self.guard.above_threshold(matched.loss, record):
            syn = self.learnables
            trouble = apply_or_roll_back(syn.items(), lambda: syn.apply(matched, self.cfg.learn_lr),
                                         syn.image_lr, self.cfg.lr_lr)
        if trouble:
            self.guard.refuse(record, trouble, self._first_loss_hint())
            return False
        self.guard.accept()
        return True

    def _advance_schedule(self, record: dict, matched: Combined, heldout: bool) -> None:
        """After an accepted update: STM's stage machine takes the held-out loss (a level-up
        may add a stage lr) and sets the image lr; what it decided goes into the record."""
        cfg, sched = self.cfg, self.schedule
        if heldout:
            event = sched.record(matched.heldout)
            record.update({k: v for k, v in asdict(event).items() if v is not None})
            if event.level_up and cfg.lr_mode == "independent-lr":
                self.learnables.add_stage_lr(sched.cap)
            if self.progress and (event.level_up or event.fine_tuning_started):
                what = "fine-tuning starts" if event.fine_tuning_started else "next stage"
                self._note(f"it {self.iteration}: {what}, stage cap {event.cap}, "
                           f"loss {matched.loss:.4g}, lr(s) " + ", ".join(f"{v:.3g}" for v in self.lrs()))
        if cfg.stm:
            lr_img = sched.after_update()
            self.learnables.image_lr = lr_img
            record.update(cap=sched.cap, fine_tuning=sched.fine_tuning, lr_img=lr_img,
                          finished=sched.finished)

    def _first_loss_hint(self) -> str:
        """The flags that set how far the student goes, with their values."""
        cfg = self.cfg
        return (f"lower --lr_teacher (now {cfg.lr_teacher[0]:g}) or --syn_steps (now "
                f"{cfg.syn_steps}), or raise --expert_epochs (now {cfg.expert_epochs})")

    # ------------------------------------------------------------------ evaluation & files
    def evaluate(self) -> dict:
        """The current set on every evaluation model (run_eval.evaluate)."""
        return run_eval.evaluate(self.cfg, self.splits, self.synthetic_set(), self.val,
                                 self.comm, self.progress)

    def final_comparison(self) -> dict | None:
        """The chosen set against its start and the baselines, written to final.json
        (run_eval.final_comparison); None where the run makes none, and on other ranks."""
        cfg = self.cfg
        return run_eval.final_comparison(
            cfg, self.splits, self.synthetic_set(),
            None if cfg.load_syn_image else self.initial_images.cpu(), self.run_dir,
            self.best.get("iteration") is not None, self.val,
            lambda: run_eval.expert_accuracy(self.store, self.experts), self.comm, self.progress,
            self.val_idx)

    def checkpoint(self) -> None:
        if self.comm.is_main:
            self.run_dir.save_checkpoint(self.state_dict(), self.synthetic_set())

    def run(self) -> dict:
        """Distill to the end; rank 0 writes the run directory, the other ranks compute."""
        cfg = self.cfg
        self.run_dir.write_config(cfg, self.source)
        self.tracker = (Tracker.open(self.run_dir.path, asdict(cfg), wandb=cfg.wandb,
                                     tensorboard=cfg.tensorboard, name=cfg.wandb_name)
                        if self.comm.is_main else Tracker())
        # a new run in a folder that held another starts afresh (its logs and results would
        # otherwise be read, plotted and compared with this one's); a resumed run, or a second
        # run() of the same Distiller, continues its own
        metrics, evals = self.run_dir.open_logs(
            fresh=not self.resumed and self.iteration == cfg.prev_iter)
        bar = progress_out.bar(range(self.iteration, cfg.iterations), desc="distill",
                               enabled=self.progress, report=True)
        try:
            if cfg.eval_it and self.iteration == cfg.prev_iter and self.best["iteration"] is None:
                self._evaluate_and_log(evals)  # the start: a run may not improve on it
            for _ in bar:
                record = self.step()
                self._log_step(record, metrics, bar)
                done = record.get("finished", False) or self.iteration >= cfg.iterations
                if cfg.eval_it and (self.iteration % cfg.eval_it == 0 or done):
                    self._evaluate_and_log(evals)
                if done or self.iteration % cfg.checkpoint_every == 0:
                    metrics.flush()
                    self.checkpoint()
                if done:
                    break
        finally:
            metrics.close()
            evals.close()
            self.tracker.close()
        self.checkpoint()
        final = self.final_comparison()
        if final is not None:
            self.best = {**self.best, "verdict": final["message"], "beats_all": final["beats_all"]}
        return self.best

    def _log_step(self, record: dict, metrics: Log, bar) -> None:
        """An iteration's record to metrics.jsonl and the trackers; the guard's warnings and
        its stop (after the last good state is checkpointed)."""
        self.guard.warn_if_stuck(record)
        metrics.write(record)
        self.tracker.log(record, record["it"])
        self.guard.check(self.checkpoint, str(self.run_dir.checkpoint_path))
        bar.set_postfix(loss=f"{record['loss']:.3f}", cap=record.get("cap", "-"))

    def _evaluate_and_log(self, evals: Log) -> None:
        """Evaluate the current set, log it, and keep it as synthetic_best.pt when it is the
        best so far by the one rule (run_eval.improved_best)."""
        syn = self.synthetic_set()
        result = run_eval.evaluate(self.cfg, self.splits, syn, self.val, self.comm,
                                   self.progress)
        record = run_eval.log_evaluation(evals, self.tracker, self.cfg, self.splits, syn,
                                         self.iteration, result, self.comm)
        best = run_eval.improved_best(self.best, record, self.cfg)
        if best is not None:
            self.best = best
            self.run_dir.save_best(syn)
