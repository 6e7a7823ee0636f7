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
    assert "(default: uniform:16)" in " ".join(out.stdout.split())


def test_bad_flags_give_one_clear_line():
    out = run_job("jobs/demo.py", "--frames", "sometimes")
    assert out.returncode == 2
    assert "bad frame sampling 'sometimes'" in out.stderr.strip().splitlines()[-1]
    out = run_job("jobs/demo.py", "--audio-mode", "mfcc")
    assert out.returncode == 2 and "invalid choice: 'mfcc'" in out.stderr


@pytest.mark.slow
def test_demo_preprocesses_the_sample_set_on_local_ray(tmp_path):
    out = run_job("jobs/demo.py", "--data-dir", str(tmp_path), "--train-per-class", "1", "--val-per-class", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.splitlines()
    rows = [ln.split() for ln in lines if ln.startswith(("Train/", "Val/"))]
    assert len(rows) == 14
    for row in rows:
        clip, label, split, status, frames, faces = row[:6]
        assert clip.split("/")[1] == label and status == "ok" and frames == "16" and int(faces) >= 14
        assert "(1, 200, 20" in " ".join(row)  # spectrogram [1, 200, ~201] for 2 s of audio
    assert any(ln.startswith("preprocessed 14 clips (14 ok)") for ln in lines)
