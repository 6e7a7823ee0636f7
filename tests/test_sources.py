import dataclasses

import pytest

from raylib.errors import SourceError
from raylib.sources import clip_id, list_clips, detect_format


def touch(root, *names):
    for n in names:
        p = root / n
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x")


def test_afew_class_folders(tmp_path):
    touch(tmp_path, "Train/Angry/a.avi", "Train/happy/b.mp4", "Val/Sad/c.avi", "Test/d.avi", "Train/Angry/notes.txt")
    recs = list_clips(str(tmp_path), "afew")
    got = {(r.uri.split(str(tmp_path))[1], r.label, r.split) for r in recs}
    assert got == {("/Train/Angry/a.avi", "Angry", "train"), ("/Train/happy/b.mp4", "Happy", "train"),
                   ("/Val/Sad/c.avi", "Sad", "val"), ("/Test/d.avi", None, "test")}
    assert all(r.dataset == "afew" for r in recs)
    assert detect_format(str(tmp_path)) == "afew"


def test_afew_unknown_labels_are_listed_by_file(tmp_path):
    touch(tmp_path, "Train/Angry/a.avi", "Train/Contempt/x.avi", "Val/Bored/y.mp4", "Misc/z.mp4")
    with pytest.raises(SourceError) as info:
        list_clips(str(tmp_path), "afew")
    msg = str(info.value)
    assert msg.startswith("3 clip(s) with unknown AFEW label folder")
    for name in ("Contempt/x.avi", "Bored/y.mp4", "Misc/z.mp4"):
        assert name in msg
    assert "a.avi" not in msg


def test_ravdess_codes_map_onto_afew_labels(tmp_path):
    touch(tmp_path, "Actor_01/01-01-02-01-01-01-01.mp4",  # calm -> Neutral
          "Actor_01/01-01-08-02-01-01-01.mp4",  # surprised
          "Actor_22/01-01-05-01-02-02-22.mp4",  # angry, val actor
          "Actor_01/02-01-03-01-01-01-01.mp4")  # video-only: no audio, left out
    recs = sorted(list_clips(str(tmp_path)), key=lambda r: r.uri)
    assert [(r.label, r.split) for r in recs] == [("Neutral", "train"), ("Surprise", "train"), ("Angry", "val")]
    assert [r.speaker for r in recs] == ["01", "01", "22"]  # the actor: folds hold whole speakers out
    touch(tmp_path, "Actor_01/01-01-09-01-01-01-01.mp4")
    with pytest.raises(SourceError, match="01-01-09-01-01-01-01.mp4 \\(emotion code 09\\)"):
        list_clips(str(tmp_path), "ravdess")


def test_cremad_file_names(cremad_clips, tmp_path):
    import os

    recs = list_clips(os.path.dirname(cremad_clips[0]))
    assert sorted(r.label for r in recs) == ["Angry", "Disgust", "Fear", "Happy", "Neutral", "Sad"]
    assert {r.split for r in recs} == {"train"} and {r.dataset for r in recs} == {"cremad"}
    assert {r.speaker for r in recs} == {os.path.basename(c)[:4] for c in cremad_clips}
    touch(tmp_path, "1090_IEO_HAP_HI.flv", "1001_DFA_XYZ_XX.flv")
    with pytest.raises(SourceError, match="1001_DFA_XYZ_XX.flv \\(emotion code XYZ\\)"):
        list_clips(str(tmp_path), "cremad")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_manifest(tmp_path, kind):
    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pa.table({"uri": ["clips/a.mp4", "/abs/b.avi", "s3://bucket/c.mp4"],
                      "label": ["angry", "Fear", ""], "split": ["train", "Validation", "test"]})
    path = tmp_path / f"m.{kind}"
    (pacsv.write_csv if kind == "csv" else pq.write_table)(table, str(path))
    recs = list_clips(str(path))
    assert [(r.uri, r.label, r.split) for r in recs] == [
        (str(tmp_path / "clips/a.mp4"), "Angry", "train"), ("/abs/b.avi", "Fear", "val"),
        ("s3://bucket/c.mp4", None, "test")]
    assert [r.to_dict() for r in recs] == [dataclasses.asdict(r) for r in recs]
    assert {r.speaker for r in recs} == {""}  # no speaker column: unknown
    table = table.append_column("speaker", pa.array(["s1", None, "7"]))
    (pacsv.write_csv if kind == "csv" else pq.write_table)(table, str(path))
    assert [r.speaker for r in list_clips(str(path))] == ["s1", "", "7"]


def test_manifest_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("uri,label\na.mp4,Joy\nb.mp4,Happy\nc.mp4,Boredom\n")
    with pytest.raises(SourceError, match="2 clip\\(s\\) with unknown label or split") as info:
        list_clips(str(bad))
    assert "a.mp4 (label 'Joy')" in str(info.value) and "c.mp4 (label 'Boredom')" in str(info.value)
    nolabel = tmp_path / "nolabel.csv"
    nolabel.write_text("path\na.mp4\n")
    with pytest.raises(SourceError, match="lacks column\\(s\\) label, uri"):
        list_clips(str(nolabel))


def test_wrong_paths_and_unknown_layouts(tmp_path):
    with pytest.raises(SourceError, match="not found"):
        list_clips(str(tmp_path / "absent"))
    with pytest.raises(SourceError, match="no video or audio files"):
        list_clips(str(tmp_path))
    touch(tmp_path, "holiday.mp4")
    with pytest.raises(SourceError, match="cannot tell the layout"):
        list_clips(str(tmp_path))
    with pytest.raises(SourceError, match="unknown dataset format"):
        list_clips(str(tmp_path), "kinetics")


def test_clip_id_is_a_stable_hash_of_the_uri():
    # fixed values: ids must not change across processes, machines or releases
    assert clip_id("s3://bucket/Train/Angry/a.avi") == "fa2592695b2c2244"
    assert clip_id("/data/x.mp4") == "64308c2d954cc490"
    assert clip_id("/data/x.mp4") != clip_id("/data/x.mp4 ")


def test_s3_folder_listing(s3_bucket):
    from raylib import storage

    fs, _ = storage.filesystem(s3_bucket)
    for name in ("Train/Angry/a.mp4", "Val/Happy/b.avi"):
        fs.pipe(f"{s3_bucket}/afew/{name}".removeprefix("s3://"), b"x")
    recs = list_clips(f"{s3_bucket}/afew")
    assert sorted((r.uri, r.label, r.split) for r in recs) == [
        (f"{s3_bucket}/afew/Train/Angry/a.mp4", "Angry", "train"),
        (f"{s3_bucket}/afew/Val/Happy/b.avi", "Happy", "val")]


def test_clip_id_is_the_same_for_every_spelling_of_a_file(tmp_path, monkeypatch):
    from raylib.sources import canonical_uri

    touch(tmp_path, "data/x.mp4")
    monkeypatch.chdir(tmp_path)
    absolute = str(tmp_path / "data" / "x.mp4")
    spellings = ["data/x.mp4", "./data/x.mp4", absolute, f"file://{absolute}", "data//sub/../x.mp4"]
    assert {canonical_uri(s) for s in spellings} == {absolute}
    assert len({clip_id(s) for s in spellings}) == 1
    assert clip_id("s3://b/k/x.mp4") == clip_id("s3://b/k//./x.mp4") == clip_id("s3a://b/k/x.mp4") == clip_id("S3://b/k/x.mp4")
    assert clip_id("s3://b/k/x.mp4") != clip_id("s3://other/k/x.mp4") != clip_id(absolute)
    assert {canonical_uri(s) for s in ("s3://b//k/x.mp4", "s3://b/k/../k/x.mp4", "s3://b/k/x.mp4/")} == {"s3://b/k/x.mp4"}
    assert canonical_uri("s3://b/k/.x/y..mp4") == "s3://b/k/.x/y..mp4" and canonical_uri("s3://b/") == "s3://b"


def test_manifest_duplicates_collapse_into_one_record_with_a_warning(tmp_path, monkeypatch, capsys):
    touch(tmp_path, "m/clips/a.mp4", "m/clips/b.mp4")
    (tmp_path / "m" / "manifest.csv").write_text(
        "uri,label,split\nclips/a.mp4,Happy,train\nclips/b.mp4,Sad,val\n./clips/a.mp4,happy,train\n"
        f"{tmp_path}/m/clips/a.mp4,Happy,train\n")
    monkeypatch.chdir(tmp_path)
    recs = list_clips("m/manifest.csv")
    assert [(r.uri, r.label, r.split) for r in recs] == [(str(tmp_path / "m/clips/a.mp4"), "Happy", "train"),
                                                          (str(tmp_path / "m/clips/b.mp4"), "Sad", "val")]
    assert capsys.readouterr().err.strip() == (f"sources: warning: 2 duplicate record(s) of the same file in "
                                               f"m/manifest.csv collapsed into one")


def test_a_file_in_two_splits_or_with_two_labels_is_an_error_listing_it(tmp_path):
    touch(tmp_path, "clips/a.mp4", "clips/b.mp4", "clips/c.mp4")
    (tmp_path / "manifest.csv").write_text("uri,label,split\nclips/a.mp4,Happy,train\nclips/a.mp4,Happy,val\n"
                                           "clips/b.mp4,Sad,train\nclips/./b.mp4,Angry,train\nclips/c.mp4,Fear,val\n")
    with pytest.raises(SourceError) as info:
        list_clips(str(tmp_path / "manifest.csv"))
    msg = str(info.value)
    assert msg.startswith("2 file(s) listed in two splits or with two labels (train/val leakage):")
    assert f"{tmp_path}/clips/a.mp4 (train/Happy, val/Happy)" in msg
    assert f"{tmp_path}/clips/b.mp4 (train/Angry, train/Sad)" in msg and "c.mp4" not in msg
