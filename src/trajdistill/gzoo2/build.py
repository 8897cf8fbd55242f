"""Build the curated GZoo2 / GZoo2_aug datasets (algorithm.md section 7) into a directory.

Steps: label every catalog galaxy by its most confident class; per class walk the
galaxies from most to least confident, skipping those without a usable image, until
`per_class` are kept; shuffle each class with its own seeded generator and split
test/train; write the uint8 arrays, then the manifest (last, atomically, so a
half-written build is never mistaken for a finished one).

Output directory:
  train_images.npy (N, 3, S, S) uint8, train_labels.npy (N,) int64,
  test_images.npy, test_labels.npy, manifest.json,
  montage.png (examples per class), class_means.png + class_means.npy (K, 3, S, S) float32 in [0, 1].
Row order: class by class; within a class, the shuffled galaxy order; in the training
set each galaxy's `aug` rotations are consecutive (row = galaxy * aug + k, angle
k * 360 / aug degrees), so rows 0::aug of a class are its unrotated images.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import progress as progress_out
from ..data.base import DataError
from ..errors import ConfigError
from ..io import write_json
from . import classes as tree_mod
from .catalog import Catalog, read_catalog, read_mapping, sha256_file
from .images import Found, ImageSource, augmented, to_array
from .montage import save_class_means, save_montage
from .output import NpyWriter, PixelStats, save_npy

FORMAT = "trajdistill-gzoo2"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ARRAYS = ("train_images.npy", "train_labels.npy", "test_images.npy", "test_labels.npy")

# Reference sizes: nine classes 600 per class, 100 test (1/6); ten classes 100, 80/20.
_DEFAULT_PER_CLASS = {9: 600, 10: 100}
_DEFAULT_TEST_FRACTION = {9: 1 / 6, 10: 0.2}


class GZoo2Warning(UserWarning):
    """A class that could not be filled, or galaxies skipped for want of an image."""


@dataclass(frozen=True)
class BuildOptions:
    per_class: int
    test_per_class: int
    aug: int
    votes: str
    seed: int
    size: int
    tree: int

    @property
    def angles(self) -> list[float]:
        return [360.0 * k / self.aug for k in range(self.aug)]

    @property
    def name(self) -> str:
        return ("GZoo2" if self.tree == 9 else "GZoo2_10class") + ("_aug" if self.aug > 1 else "")


def resolve_options(per_class=None, test_per_class=None, aug=10, votes="fraction", seed=0,
                    size=128, tree=9) -> BuildOptions:
    """Fill the tree-dependent defaults and reject impossible settings."""
    if tree not in tree_mod.TREES:
        raise ConfigError(f"tree must be 9 or 10, got {tree!r}")
    if votes not in tree_mod.VOTES:
        raise ConfigError(f"votes must be one of {', '.join(tree_mod.VOTES)}, got {votes!r}")
    per_class = _DEFAULT_PER_CLASS[tree] if per_class is None else int(per_class)
    if test_per_class is None:
        test_per_class = int(per_class * _DEFAULT_TEST_FRACTION[tree] + 0.5)
    if per_class < 2 or not 1 <= test_per_class < per_class:
        raise ConfigError(f"--per-class ({per_class}) must be >= 2 and --test-per-class "
                          f"({test_per_class}) in [1, --per-class)")
    if aug < 1 or size < 1 or seed < 0:
        raise ConfigError(f"need --aug >= 1, --size >= 1, --seed >= 0, got aug={aug}, "
                          f"size={size}, seed={seed}")
    return BuildOptions(per_class, int(test_per_class), int(aug), votes, int(seed), int(size), tree)


# ---------------------------------------------------------------- labelling and selection

def label_catalog(catalog: Catalog | str | Path, votes: str = "fraction", tree: int = 9,
                  progress: bool = True) -> tuple[Catalog, np.ndarray, np.ndarray, np.ndarray]:
    """(catalog, confidences (N, K), labels (N,) with -1 = none, best confidence (N,))."""
    answers = tree_mod.required_answers(tree)
    if not isinstance(catalog, Catalog):
        columns = [tree_mod.column_name(a, votes) for a in answers]
        catalog = read_catalog(catalog, columns, progress=progress)
    p = {a: catalog.values[tree_mod.column_name(a, votes)] for a in answers}
    conf = tree_mod.confidences(p, tree)
    labels, best = tree_mod.assign_labels(conf)
    return catalog, conf, labels, best


def ranked(ids: np.ndarray, labels: np.ndarray, best: np.ndarray, c: int) -> np.ndarray:
    """Row indices of the galaxies labelled c, most confident first, ties by ascending id."""
    idx = np.flatnonzero(labels == c)
    return idx[np.lexsort((ids[idx], -best[idx]))]


def _select_class(order: np.ndarray, need: int, find, pool: ThreadPoolExecutor, bar
                  ) -> tuple[list[tuple[int, Found]], list[tuple[int, Found]]]:
    """Walk `order` until `need` galaxies have a usable image (next ones replace skipped ones).

    Checked in batches of exactly the number still missing, so the result does not
    depend on the number of threads.
    """
    kept, skipped, pos = [], [], 0
    while len(kept) < need and pos < len(order):
        batch = order[pos:pos + need - len(kept)]
        pos += len(batch)
        for i, found in zip(batch, pool.map(find, batch)):
            (kept if found.ok else skipped).append((int(i), found))
        bar.update(len(batch))
    return kept, skipped


def _split(kept: list, opts: BuildOptions, c: int) -> tuple[list, list]:
    """Shuffle one class with its own generator, then first n_test -> test, rest -> train.

    A class that could not be filled keeps the test:train ratio.
    """
    perm = np.random.default_rng([opts.seed, c]).permutation(len(kept))
    shuffled = [kept[j] for j in perm]
    n_test = int(len(kept) * opts.test_per_class / opts.per_class + 0.5)
    return shuffled[n_test:], shuffled[:n_test]


# ---------------------------------------------------------------- output

def _write_images(out: Path, split: str, rows: list[tuple[int, int, Found]], source: ImageSource,
                  angles: list[float], size: int, pool: ThreadPoolExecutor, progress: bool,
                  stats: PixelStats | None = None, examples: list[list] | None = None,
                  max_examples: int = 0) -> dict:
    """Decode, rotate, crop and resize each galaxy, appending to `<split>_images.npy` in order.

    Also writes `<split>_labels.npy`; feeds `stats` and keeps the first unrotated images
    of each class in `examples` (both for the training split).
    """
    n = len(rows) * len(angles)
    writer = NpyWriter(out / f"{split}_images.npy", np.uint8, (n, 3, size, size))

    def one(found: Found) -> np.ndarray:
        img = source.load(found)
        return augmented(img, size, angles) if len(angles) > 1 else to_array(img, size)[None]

    chunk = 64  # a bounded number of results in flight
    try:
        with progress_out.bar(total=len(rows), desc=f"{split} images", unit="galaxies",
                              enabled=progress, report=True) as bar:
            for s in range(0, len(rows), chunk):
                part = rows[s:s + chunk]
                for (c, _, _), x in zip(part, pool.map(one, [f for _, _, f in part])):
                    writer.write(x)
                    if stats is not None:
                        stats.add(x, c)
                    if examples is not None and len(examples[c]) < max_examples:
                        examples[c].append(x[0].copy())
                bar.update(len(part))
    except BaseException:
        writer.abort()
        raise
    labels = np.repeat(np.array([c for c, _, _ in rows], np.int64), len(angles))
    return {f"{split}_images.npy": writer.commit(),
            f"{split}_labels.npy": save_npy(out / f"{split}_labels.npy", labels)}


def code_version() -> dict:
    from .. import __version__
    commit = None
    try:
        r = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                           capture_output=True, text=True, timeout=10)
        commit = r.stdout.strip() or None if r.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        pass
    return {"trajdistill": __version__, "git_commit": commit}


# ---------------------------------------------------------------- the build

def build_gzoo2(catalog, images, out, mapping=None, per_class=None, test_per_class=None,
                aug=10, votes="fraction", seed=0, size=128, tree=9, workers=None,
                examples=8, progress=True, verbose=True) -> dict:
    """Build a curated GZoo2 dataset directory from a catalog and cut-outs; returns the manifest.

    catalog: CSV / CSV.gz / FITS with `dr7objid` or `objid` and the vote columns;
    images: folder of `<objid>.jpg`, or `<asset_id>.jpg` with `mapping` (CSV
    `objid, sample, asset_id`); per_class / test_per_class default to 600 / 100 (tree 9)
    or 100 / 20 (tree 10); aug: copies of each training image (rotations by 360/aug);
    votes: 'fraction' or 'debiased' columns; workers: decoding threads (results do not
    depend on it); examples: images per class in montage.png.
    """
    opts = resolve_options(per_class, test_per_class, aug, votes, seed, size, tree)
    log = (lambda msg: print(msg, file=sys.stderr)) if verbose else (lambda msg: None)
    images, out = Path(images), Path(out)
    if not images.is_dir():
        raise DataError(f"image folder {images} does not exist")
    cat, _, labels, best = label_catalog(catalog, opts.votes, opts.tree, progress)
    table = read_mapping(mapping, progress) if mapping is not None else None
    source = ImageSource(images, table)
    names = tree_mod.class_names(opts.tree)

    def find(i: int) -> Found:
        return source.find(int(cat.ids[i]), None if cat.samples is None else str(cat.samples[i]))

    pool = ThreadPoolExecutor(max_workers=workers or min(4, os.cpu_count() or 1))
    try:
        per_class_info, train, test, skipped_all = _select(cat, labels, best, opts, names, find,
                                                           pool, progress)
        _report(per_class_info, skipped_all, cat, opts, log)
        if not train:
            raise DataError(f"no training images: none of the selected galaxies has a usable "
                            f"image in {images}")
        manifest = _write_output(out, opts, names, train, test, source, pool, progress, examples)
    finally:
        pool.shutdown()
    manifest.update(_provenance(cat, mapping, images, labels, opts, names, per_class_info,
                                skipped_all, train + test))
    write_json(out / MANIFEST, manifest)  # last: its presence marks a finished build
    log(f"{opts.name}: {manifest['counts']['train']} train + {manifest['counts']['test']} test "
        f"images written to {out}")
    return manifest


def _select(cat: Catalog, labels, best, opts: BuildOptions, names: list[str], find,
            pool: ThreadPoolExecutor, progress: bool) -> tuple[list, list, list, list]:
    """Per class: keep the most confident galaxies that have an image, then split.

    Returns the per-class manifest entries and (class, row, Found) lists for train,
    test and the skipped galaxies.
    """
    found_counts = np.bincount(labels[labels >= 0], minlength=len(names))
    info, train, test, skipped_all = [], [], [], []
    with progress_out.bar(total=int(np.minimum(found_counts, opts.per_class).sum()),
                          desc="checking images", unit="galaxies", enabled=progress,
                          report=True) as bar:
        for c in range(len(names)):
            kept, skipped = _select_class(ranked(cat.ids, labels, best, c), opts.per_class,
                                          find, pool, bar)
            tr, te = _split(kept, opts, c)
            train += [(c, i, f) for i, f in tr]
            test += [(c, i, f) for i, f in te]
            skipped_all += [(c, i, f) for i, f in skipped]
            info.append(_class_info(c, names[c], found_counts[c], kept, tr, te, skipped, best,
                                    cat, opts))
    return info, train, test, skipped_all


def _class_info(c, name, found, kept, train, test, skipped, best, cat, opts) -> dict:
    return {"class": c, "name": name, "found": int(found), "kept": len(kept),
            "train": len(train), "test": len(test), "skipped": len(skipped),
            "filled": len(kept) == opts.per_class,
            # ranking is by confidence, so the last kept is the least confident kept
            "last_confidence": float(best[kept[-1][0]]) if kept else None,
            "train_ids": [int(cat.ids[i]) for i, _ in train],
            "test_ids": [int(cat.ids[i]) for i, _ in test]}


def _report(info: list[dict], skipped: list, cat: Catalog, opts: BuildOptions, log) -> None:
    """Say which classes could not be filled and which galaxies had no usable image."""
    log(f"{'class':>24} {'found':>7} {'kept':>6} {'train':>6} {'test':>5} {'skipped':>7}")
    for d in info:
        log(f"{str(d['class']) + ' ' + d['name']:>24} {d['found']:>7} {d['kept']:>6} "
            f"{d['train']:>6} {d['test']:>5} {d['skipped']:>7}")
    short = [d for d in info if not d["filled"]]
    for d in short:
        warnings.warn(f"GZoo2 class {d['class']} ({d['name']}): only {d['kept']} of "
                      f"{opts.per_class} galaxies kept ({d['found']} labelled in the catalog, "
                      f"{d['skipped']} skipped for want of an image)", GZoo2Warning, stacklevel=3)
    if skipped:
        kinds = Counter(_reason_kind(f.reason) for _, _, f in skipped)
        summary = ", ".join(f"{n} {kind}" for kind, n in sorted(kinds.items()))
        warnings.warn(f"{len(skipped)} galaxies considered had no usable image ({summary}) and were "
                      "replaced by the next most confident of their class (listed in manifest.json)",
                      GZoo2Warning, stacklevel=3)
        shown = 100
        for c, i, f in skipped[:shown]:
            log(f"  skipped {int(cat.ids[i])} (class {c}): {f.reason}")
        if len(skipped) > shown:
            log(f"  ... and {len(skipped) - shown} more (see manifest.json 'missing_images')")


def _reason_kind(reason: str) -> str:
    """'missing file 123.jpg; unreadable file 456.jpg: ...' -> 'unreadable file' (the last tried)."""
    last = reason.split("; ")[-1]
    for kind in ("not in the mapping table", "missing file", "unreadable file"):
        if last.startswith(kind):
            return kind
    return last


def _write_output(out: Path, opts: BuildOptions, names: list[str], train: list, test: list,
                  source: ImageSource, pool: ThreadPoolExecutor, progress: bool,
                  examples: int) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    (out / MANIFEST).unlink(missing_ok=True)  # a rebuild must never be read with an old manifest
    k, shape = len(names), (3, opts.size, opts.size)
    stats, shown = PixelStats(k, shape), [[] for _ in range(k)]
    arrays = _write_images(out, "train", train, source, opts.angles, opts.size, pool, progress,
                           stats, shown, examples)
    arrays.update(_write_images(out, "test", test, source, [0.0], opts.size, pool, progress))
    mean, std = stats.mean_std()
    means = stats.class_means()
    save_npy(out / "class_means.npy", means)
    save_class_means(means, names, out / "class_means.png")
    save_montage(shown, names, out / "montage.png")
    return {"format": FORMAT, "format_version": FORMAT_VERSION, "name": opts.name,
            "classes": names, "class_descriptions": tree_mod.class_descriptions(opts.tree),
            "image_shape": list(shape),
            "counts": {"train": arrays["train_labels.npy"]["shape"][0],
                       "test": arrays["test_labels.npy"]["shape"][0]},
            "mean": mean, "std": std, "arrays": arrays,
            "augment": {"copies": opts.aug, "angles": opts.angles,
                        "train_row": "class by class; row = galaxy * copies + k, rotated by "
                                     "angles[k] degrees counter-clockwise before the crop"}}


def _provenance(cat: Catalog, mapping, images: Path, labels: np.ndarray, opts: BuildOptions,
                names: list[str], info: list[dict], skipped: list, used: list) -> dict:
    files = sorted((int(cat.ids[i]), f.path.name, f.sha256) for _, i, f in used)
    digest = hashlib.sha256("".join(f"{o} {n} {s}\n" for o, n, s in files).encode()).hexdigest()
    return {
        "code_version": code_version(),
        "options": asdict(opts),
        "inputs": {
            "catalog": {"path": str(cat.path.resolve()), "sha256": sha256_file(cat.path),
                        "rows": len(cat), "id_column": cat.id_column},
            "mapping": None if mapping is None else {"path": str(Path(mapping).resolve()),
                                                     "sha256": sha256_file(mapping)},
            "images": {"dir": str(images.resolve()), "used": len(files), "sha256": digest,
                       "files": [[o, n, s] for o, n, s in files]},
        },
        "unlabelled": int((labels < 0).sum()),
        "per_class": info,
        "missing_images": [{"objid": int(cat.ids[i]), "class": c, "class_name": names[c],
                            "reason": f.reason} for c, i, f in skipped],
    }
