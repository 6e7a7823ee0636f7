import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_job(*args, timeout=300):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_help_lists_every_flag_with_its_default():
    out = run_job("jobs/demo.py", "--help")
    assert out.returncode == 0
    for flag in ("--data-dir", "--train-per-class", "--val-per-class", "--frames", "--audio-mode", "--num-cpus"):
        assert flag in out.stdout
    assert "(default: uniform:8)" in " ".join(out.stdout.split())


def test_bad_flags_give_one_clear_line():
    out = run_job("jobs/demo.py", "--frames", "sometimes")
    assert out.returncode == 2
    assert "bad frame sampling 'sometimes'" in out.stderr.strip().splitlines()[-1]
    out = run_job("jobs/demo.py", "--audio-mode", "mfcc")
    assert out.returncode == 2 and "invalid choice: 'mfcc'" in out.stderr


@pytest.mark.slow
def test_demo_extracts_the_sample_set_on_local_ray(tmp_path):
    args = ("jobs/demo.py", "--data-dir", str(tmp_path), "--train-per-class", "1", "--val-per-class", "1",
            "--frames", "uniform:4", "--quiet", "--extract-only")
    out = run_job(*args)
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.startswith(("Train/", "Val/"))]
    assert len(rows) == 14
    for row in rows:
        clip, label, split, status, frames, faces, audio_s, spectrogram = row[:8]
        assert clip.split("/")[1] == label and status == "ok" and frames == "4" and faces == "4"
        assert float(audio_s) == pytest.approx(2.0, abs=0.1) and spectrogram.startswith("1x200x20")
    assert any(ln.startswith("extracted 14 clips (0 already stored)") for ln in lines)
    assert any(ln.startswith(f"feature store: {tmp_path / 'features'} (14 clips") for ln in lines)
    again = run_job(*args)  # a second demo reuses the sample set and the store
    assert again.returncode == 0 and any(ln.startswith("extracted 0 clips (14 already stored)")
                                         for ln in again.stdout.splitlines())
