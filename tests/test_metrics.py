import numpy as np

from raylib.metrics import confusion_matrix, summarize


def test_metrics_by_hand():
    y_true = [0, 0, 0, 0, 1, 1, 2]
    y_pred = [0, 0, 0, 1, 1, 0, 1]
    m = summarize(y_true, y_pred, num_classes=4)
    assert m["confusion"].tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert m["accuracy"] == 4 / 7
    np.testing.assert_allclose(m["recall"][:3], [0.75, 0.5, 0.0])
    assert np.isnan(m["recall"][3])  # absent class: not part of the UAR
    assert m["uar"] == (0.75 + 0.5 + 0.0) / 3


def test_uar_differs_from_accuracy_on_imbalanced_data():
    y_true = [0] * 9 + [1]
    m = summarize(y_true, [0] * 10, num_classes=2)
    assert m["accuracy"] == 0.9 and m["uar"] == 0.5
    assert confusion_matrix([1], [0], 2).tolist() == [[0, 0], [1, 0]]
