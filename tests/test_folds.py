"""Speaker folds (raylib.folds): the plan, worked by hand, and its refusals."""

import numpy as np
import pytest

from raylib.errors import StoreError
from raylib.folds import Fold, fold_plan, inner_count, speaker_split, summarize


def test_six_speakers_in_three_folds_by_hand():
    plan = fold_plan(["05", "01", "02", "", None, "06", "03", "04", "01"], 3)  # unsorted, repeated, blanks
    assert plan == [Fold(0, ("03", "04", "05"), ("06",), ("01", "02")),
                    Fold(1, ("01", "02", "05"), ("06",), ("03", "04")),
                    Fold(2, ("01", "02", "03"), ("04",), ("05", "06"))]
    for f in plan:  # every speaker has exactly one role in every fold
        assert sorted(f.train + f.select + f.test) == ["01", "02", "03", "04", "05", "06"]
    assert sorted(s for f in plan for s in f.test) == ["01", "02", "03", "04", "05", "06"]  # each tested once


def test_uneven_folds_and_inner_counts():
    # 24 RAVDESS actors in 5 folds: tests of 5,5,5,5,4; the rest 19 or 20 -> 4 select (round(19/5)=4, round(20/5)=4)
    plan = fold_plan([f"{i:02d}" for i in range(1, 25)], 5)
    assert [len(f.test) for f in plan] == [5, 5, 5, 5, 4]
    assert [len(f.select) for f in plan] == [4, 4, 4, 4, 4]
    assert plan[4].test == ("21", "22", "23", "24") and plan[4].select == ("17", "18", "19", "20")
    assert inner_count(2, 2) == 1 and inner_count(3, 10) == 1  # at least one selects, one trains


def test_too_few_speakers_or_folds_are_refused():
    with pytest.raises(StoreError, match="3 speaker folds need .* names 2 \\(a, b\\)"):
        fold_plan(["a", "b", "a"], 3)
    with pytest.raises(StoreError, match="names 0 \\(none\\)"):
        fold_plan(["", None], 2)
    with pytest.raises(StoreError, match="two left to train and select"):
        fold_plan(["a", "b", "c"], 2)  # a fold of 2 test speakers leaves one
    with pytest.raises(ValueError, match="--folds must be >= 2"):
        fold_plan(["a", "b", "c"], 1)
    assert len(fold_plan(["a", "b", "c"], 3)) == 3


def test_rows_get_their_fold_role():
    fold = Fold(0, ("a", "b"), ("c",), ("d",))
    roles = speaker_split(np.array(["d", "a", None, "c", "z", "b"], dtype=object), fold)
    assert roles.tolist() == ["test", "train", "", "val", "", "train"]
    assert fold.role("c") == "val" and fold.role("z") == ""


def test_mean_and_sample_sd_of_fold_figures():
    s = summarize([0.5, 0.7, 0.6])
    assert s["mean"] == pytest.approx(0.6) and s["sd"] == pytest.approx(0.1)  # sqrt((0.01+0.01+0)/2)
    assert summarize([0.4]) == {"mean": 0.4, "sd": 0.0}
