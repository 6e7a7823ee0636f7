"""Speaker normalisation (raylib.speaker_norm): each speaker's features standardised with that
speaker's own statistics, worked by hand."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from raylib.schema import to_table
from raylib.speaker_norm import MIN_STD, SpeakerNormError, normalize, store_stats, table_stats


def rows():
    base = {"uri": "u", "label": "Happy", "split": "train", "dataset": "t", "status": "ok"}
    return [
        # speaker a: frames (1, 2), (3, 4) and (5, 6); spectrogram bins over time: [0, 2] [4, 4] then [4] [4]
        {**base, "clip_id": "a1", "speaker": "a", "visual_features": np.array([[1, 2], [3, 4]]),
         "audio": np.array([[[0, 2], [4, 4]]])},
        {**base, "clip_id": "a2", "speaker": "a", "visual_features": np.array([[5, 6]]), "audio": np.array([[[4], [4]]])},
        # no speaker: a group of its own; an audio file (no frames) and an errored row (no features)
        {**base, "clip_id": "n1", "speaker": None, "visual_features": None, "audio": np.array([[[1, 3], [2, 2]]]),
         "status": "audio_only"},
        {**base, "clip_id": "e1", "speaker": "b", "status": "error"},
    ]


def test_each_speaker_is_standardised_with_its_own_statistics_by_hand():
    table = to_table(rows())
    stats = table_stats(table)
    assert set(stats) == {"a", ""}  # the errored row of b has no features: no statistics
    sd = np.sqrt(8 / 3)  # of 1, 3, 5 (and of 2, 4, 6; and of the first bin's 0, 2, 4)
    np.testing.assert_allclose(stats["a"]["visual_mean"], [3, 4])
    np.testing.assert_allclose(stats["a"]["visual_std"], [sd, sd], rtol=1e-6)
    np.testing.assert_allclose(stats["a"]["audio_mean"], [[2, 4]])
    np.testing.assert_allclose(stats["a"]["audio_std"], [[sd, MIN_STD]], rtol=1e-6)  # a constant bin: floored
    assert stats[""]["visual_mean"] is None
    np.testing.assert_allclose(stats[""]["audio_mean"], [[2, 2]])
    np.testing.assert_allclose(stats[""]["audio_std"], [[1, MIN_STD]], rtol=1e-6)

    out = normalize(table.slice(0, 3), stats)
    assert out.schema == table.schema
    assert out.column("clip_id").to_pylist() == ["a1", "a2", "n1"]
    vis = out.column("visual_features").to_pylist()
    np.testing.assert_allclose(vis[0], [[-2 / sd, -2 / sd], [0, 0]], rtol=1e-5)
    np.testing.assert_allclose(vis[1], [[2 / sd, 2 / sd]], rtol=1e-5)
    assert vis[2] == []
    aud = out.column("audio").to_pylist()
    np.testing.assert_allclose(aud[0], [-2 / sd, 0, 0, 0], rtol=1e-5, atol=1e-6)  # [C, F, T] row-major
    np.testing.assert_allclose(aud[1], [2 / sd, 0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(aud[2], [-1, 1, 0, 0], atol=1e-6)
    assert out.column("audio_shape").to_pylist() == table.slice(0, 3).column("audio_shape").to_pylist()
    # a slice normalised alone is normalised the same (the statistics are fixed, not the batch's)
    np.testing.assert_allclose(normalize(table.slice(1, 1), stats).column("audio").to_pylist()[0], aud[1], atol=1e-6)
    with pytest.raises(SpeakerNormError, match="no feature statistics for speaker"):
        normalize(table.slice(0, 1), {"": stats[""]})
    # rows in another order (speakers interleaved) get the same values row by row
    shuffled = normalize(table.take([2, 1, 0]), stats)
    np.testing.assert_allclose(shuffled.column("visual_features").to_pylist()[2], vis[0], rtol=1e-5)
    np.testing.assert_allclose(shuffled.column("audio").to_pylist()[0], aud[2], atol=1e-6)
    # statistics without a modality the rows have: a clear error, not a crash
    with pytest.raises(SpeakerNormError, match="no visual statistics for speaker"):
        normalize(table.slice(0, 1), {"a": stats[""]})
    with pytest.raises(SpeakerNormError, match="no audio statistics for speaker"):
        normalize(table.slice(2, 1), {"": {**stats["a"], "audio_mean": None, "audio_std": None}})


def test_store_statistics_accumulate_over_shards_and_need_a_speaker_column(tmp_path):
    table = to_table(rows())
    for split, part in (("train", table.slice(0, 1)), ("val", table.slice(1, 3))):
        (tmp_path / "s" / split).mkdir(parents=True)
        pq.write_table(part, str(tmp_path / "s" / split / "part.parquet"))
    stats = store_stats(str(tmp_path / "s"))
    whole = table_stats(table)
    for key in ("visual_mean", "visual_std", "audio_mean", "audio_std"):
        np.testing.assert_allclose(stats["a"][key], whole["a"][key], rtol=1e-6)
    (tmp_path / "old" / "train").mkdir(parents=True)
    pq.write_table(table.drop_columns(["speaker"]), str(tmp_path / "old" / "train" / "part.parquet"))
    with pytest.raises(SpeakerNormError, match="has no speaker column"):
        store_stats(str(tmp_path / "old"))


def test_a_model_trained_on_normalised_features_refuses_rows_without_statistics():
    from raylib.models.fusion import ModelConfig, build_model
    from raylib.prediction import predict

    table = to_table(rows()[:2])
    model = build_model(ModelConfig(visual_dim=2, modalities="visual", speaker_norm=True))
    with pytest.raises(SpeakerNormError, match="trained with --speaker-norm"):
        predict(model, table)
    probs, _ = predict(model, table, stats=table_stats(table))
    plain = build_model(ModelConfig(visual_dim=2, modalities="visual"))
    plain.load_state_dict(model.state_dict())
    # the same weights on rows normalised by hand give the same probabilities
    np.testing.assert_allclose(predict(plain, normalize(table, table_stats(table)))[0], probs, atol=1e-6)
