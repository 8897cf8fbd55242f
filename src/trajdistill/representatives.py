"""Real images that represent their class (`--pix_init kmeans`): the k training images nearest
the centres of a k-means clustering of the class, one per centre.

A random draw of k images per class can miss a whole mode of the class and repeat another; the
images nearest k cluster centres cover the class's modes in proportion to their size (as
DREAM's representative matching and the k-means coresets do). Distilling from them starts from
a better set than a random draw of the same size.

Images are compared by what a trained network sees in them: the features an expert's last
layer classifies (initial.Labeller.features). Compared by their pixels, the images nearest the
centres of satellite patches were bland average ones, which trained worse than a random draw
(EuroSAT river at 10 per class: 71.8 against 75.0 %; by features 76.5). At most MAX_POINTS
images of a class (a random subset of a larger class) are clustered.
"""
from __future__ import annotations

from typing import Callable

import torch

MAX_POINTS = 5000
RESTARTS = 3
ITERATIONS = 30


def kmeans(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """(k, features) centres: Lloyd's iterations from k-means++ seeds, the best of RESTARTS
    (the least within-cluster sum of squares)."""
    best, best_inertia = None, float("inf")
    for _ in range(RESTARTS):
        centres = _seeds(points, k, gen)
        for _ in range(ITERATIONS):
            owner = torch.cdist(points, centres).argmin(1)
            moved = _means(points, owner, centres)
            if torch.equal(moved, centres):
                break
            centres = moved
        inertia = float(torch.cdist(points, centres).min(1).values.square().sum())
        if inertia < best_inertia:
            best, best_inertia = centres, inertia
    return best


def _seeds(points: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """k-means++: each next seed drawn with probability proportional to its squared distance
    from the nearest seed so far (uniformly where every point is a seed already)."""
    picks = [int(torch.randint(len(points), (1,), generator=gen))]
    d2 = torch.full((len(points),), float("inf"))
    for _ in range(k - 1):
        d2 = torch.minimum(d2, (points - points[picks[-1]]).square().sum(1))
        weights = d2 if float(d2.sum()) > 0 else torch.ones_like(d2)
        picks.append(int(torch.multinomial(weights, 1, generator=gen)))
    return points[picks].clone()


def _means(points: torch.Tensor, owner: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Each centre moved to the mean of its points; a centre with none stays where it is."""
    sums = torch.zeros_like(centres).index_add_(0, owner, points)
    counts = torch.bincount(owner, minlength=len(centres)).unsqueeze(1)
    return torch.where(counts > 0, sums / counts.clamp(min=1), centres)


def nearest_distinct(points: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """For each centre in turn, the nearest point not taken by an earlier centre."""
    distances = torch.cdist(centres, points)
    taken = torch.zeros(len(points), dtype=torch.bool)
    out = []
    for row in distances:
        row = row.masked_fill(taken, float("inf"))
        i = int(row.argmin())
        taken[i] = True
        out.append(i)
    return torch.tensor(out, dtype=torch.long)


def representatives(members: torch.Tensor, features_of: Callable[[torch.Tensor], torch.Tensor],
                    k: int, gen: torch.Generator) -> torch.Tensor:
    """The k of `members` (dataset indices of one class) whose features are nearest the centres
    of a k-means clustering of the class, in the order of the centres; all of them, shuffled,
    when k >= len(members). features_of(indices) gives their (n, d) features."""
    n = len(members)
    if k >= n:
        return members[torch.randperm(n, generator=gen)]
    looked = members[torch.randperm(n, generator=gen)[:MAX_POINTS]] if n > MAX_POINTS else members
    points = torch.cat([features_of(part).flatten(1).float() for part in looked.split(512)])
    return looked[nearest_distinct(points, kmeans(points, k, gen))]
