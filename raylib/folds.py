"""Speaker-independent cross-validation: which speakers train, select and test in each fold.

Small audio-video corpora (RAVDESS, CREMA-D, eNTERFACE) are reported speaker-independent, k-fold:
no person is both seen in training and scored. The store's `speaker` column (raylib.sources)
says who is in each clip; a fold plan splits the sorted speakers into k contiguous folds of
near-equal size. In fold i the speakers of fold i are the test speakers (scored once, by the
fold's chosen model), and the remaining speakers are split again: the last `inner` of them are
the inner validation speakers that pick the epoch, the others train. The test speakers never
choose anything.

    speakers 01..06, k=3:  fold 0 test {01,02}  select {06}  train {03,04,05}
                           fold 1 test {03,04}  select {06}  train {01,02,05}
                           fold 2 test {05,06}  select {04}  train {01,02,03}
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from raylib.errors import StoreError


@dataclass(frozen=True)
class Fold:
    """The speakers of one fold: train (fit), select (pick the epoch), test (scored once)."""

    index: int
    train: tuple[str, ...]
    select: tuple[str, ...]
    test: tuple[str, ...]

    def role(self, speaker: str) -> str:
        """'train', 'val' (selection) or 'test' for a speaker of the plan; '' for one outside it."""
        if speaker in self.train:
            return "train"
        if speaker in self.select:
            return "val"
        return "test" if speaker in self.test else ""


def inner_count(rest: int, k: int) -> int:
    """How many of a fold's rest speakers select: about one fold's share of them, at least one,
    and always leaving at least one to train."""
    return max(1, min(rest - 1, round(rest / k)))


def fold_plan(speakers, k: int) -> list[Fold]:
    """The k folds over the distinct speakers given (sorted; empty names ignored). StoreError
    when there are too few speakers: each fold needs test speakers and at least two others (one
    to train, one to select)."""
    names = sorted({str(s) for s in speakers if s not in (None, "")})
    if k < 2:
        raise ValueError(f"--folds must be >= 2 (got {k})")
    if len(names) < k or len(names) - int(np.ceil(len(names) / k)) < 2:
        raise StoreError(f"{k} speaker folds need at least {max(k, 3)} speakers with labelled clips and, in each "
                         f"fold, two left to train and select; the store names {len(names)} "
                         f"({', '.join(names) or 'none'}): lower --folds or add speakers")
    parts = [tuple(str(x) for x in p) for p in np.array_split(np.array(names, dtype=object), k)]
    plan = []
    for i, test in enumerate(parts):
        rest = [s for j, p in enumerate(parts) if j != i for s in p]
        n_sel = inner_count(len(rest), k)
        plan.append(Fold(i, tuple(rest[:-n_sel]), tuple(rest[-n_sel:]), test))
    return plan


def speaker_split(speakers: np.ndarray, fold: Fold) -> np.ndarray:
    """[N] str array of 'train' / 'val' / 'test' / '' (not in the plan) for store rows' speakers."""
    roles = {s: "train" for s in fold.train} | {s: "val" for s in fold.select} | {s: "test" for s in fold.test}
    return np.array([roles.get(str(s) if s is not None else "", "") for s in speakers], dtype=object)


def summarize(values) -> dict:
    """mean and sample standard deviation of per-fold figures (sd 0 for one fold)."""
    v = np.asarray(list(values), np.float64)
    return {"mean": float(v.mean()) if len(v) else 0.0, "sd": float(v.std(ddof=1)) if len(v) > 1 else 0.0}
