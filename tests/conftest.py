"""Shared fixtures: generated clips (PyAV), bad files, real photographs, a moto S3 server."""

import os

# Every Ray process the tests start listens on 127.0.0.1 only.
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import socket

import numpy as np
import pytest

from raylib.sample import write_clip

HERE = os.path.dirname(__file__)
CREMAD_DIR = os.path.join(HERE, "data", "crema-d")

FPS = 25
NUM_FRAMES = 50
SR = 16000
TONE_HZ = 440.0


def marker_frames(n: int = NUM_FRAMES, width: int = 160, height: int = 120) -> np.ndarray:
    """Frames whose grey level encodes their index (i * 4), so decoded frames can be identified."""
    levels = (np.arange(n) * 4 + 20).clip(0, 255).astype(np.uint8)
    return np.broadcast_to(levels[:, None, None, None], (n, height, width, 3)).copy()


def tone(seconds: float, hz: float = TONE_HZ, sr: int = SR, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    return (amp * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def frame_level(frame: np.ndarray) -> int:
    """The index a marker frame encodes."""
    return int(round((float(frame.mean()) - 20) / 4))


def stop_head(proc, ray_tmp: str) -> None:
    """Stop a head a test started and nothing else: the `ray start --block` process, what runs
    under it, and the processes of its own session (their command lines name its private temp
    dir; the daemons are not all its children). `ray stop` would stop every Ray of the user on the
    machine, a job of theirs running beside the tests included."""
    import psutil

    try:
        tree = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        tree = []
    for p in psutil.process_iter(["cmdline"]):
        if p.pid != os.getpid() and ray_tmp in " ".join(p.info["cmdline"] or []) and p not in tree:
            tree.append(p)
    proc.kill()  # a test's head holds nothing to save: no graceful shutdown (it took ~30 s)
    proc.wait(timeout=60)
    for child in tree:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=30)
    assert not alive, f"processes of the test's head still running: {[p.pid for p in alive]}"


@pytest.fixture
def bystander_ray():
    """Another local Ray on the machine, as a user's `ray start --head` (or notebook) would be: a
    head with its own temp dir (RAY_TMPDIR), whose ray_current_cluster file names it, as
    /tmp/ray/ray_current_cluster does for a user's head. Yields (that temp dir, the head's process);
    the test stops its processes alone."""
    import shutil
    import subprocess
    import sys
    import tempfile
    import time

    ray_tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ray"), "start", "--head", "--port=0",
                             "--num-cpus=1", "--block", "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             "--disable-usage-stats"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address_file = os.path.join(ray_tmp, "ray", "ray_current_cluster")
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(address_file):  # written once the head is up
            assert proc.poll() is None and time.monotonic() < deadline, "the bystander Ray did not start"
            time.sleep(0.2)
        yield ray_tmp, proc
    finally:
        stop_head(proc, ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def clips(tmp_path_factory):
    """Generated clips: 50 frames at 25 fps with a 440 Hz tone, as mp4 (h264/AAC) and avi (MPEG-4/PCM),
    plus one without audio and one with a silent track."""
    root = tmp_path_factory.mktemp("clips")
    frames = marker_frames()
    audio = tone(NUM_FRAMES / FPS)
    out = {}
    for ext in ("mp4", "avi"):
        out[ext] = str(root / f"tone.{ext}")
        write_clip(out[ext], frames, audio, FPS, SR)
    out["no_audio"] = str(root / "mute.mp4")
    write_clip(out["no_audio"], frames, None, FPS, SR)
    out["silent"] = str(root / "silent.avi")
    write_clip(out["silent"], frames, np.zeros_like(audio), FPS, SR)
    return out


@pytest.fixture(scope="session")
def bad_files(tmp_path_factory, clips):
    """Broken inputs of every kind seen in the wild."""
    root = tmp_path_factory.mktemp("bad")
    good = open(clips["mp4"], "rb").read()
    good_avi = open(clips["avi"], "rb").read()
    files = {}
    files["zero_byte"] = root / "empty.mp4"
    files["zero_byte"].write_bytes(b"")
    files["text"] = root / "notes.mp4"
    files["text"].write_text("this is not a video\n" * 50)
    import io

    from PIL import Image

    png = io.BytesIO()
    Image.fromarray(marker_frames(1)[0]).save(png, format="PNG")
    files["png_renamed"] = root / "picture.mp4"
    files["png_renamed"].write_bytes(png.getvalue())
    files["truncated_mp4"] = root / "cut.mp4"  # moov atom at the end: header lost
    files["truncated_mp4"].write_bytes(good[: len(good) // 2])
    files["truncated_avi"] = root / "cut.avi"  # index lost, half the frames remain
    files["truncated_avi"].write_bytes(good_avi[: len(good_avi) // 2])
    corrupt = bytearray(good)
    rng = np.random.default_rng(0)
    start = len(corrupt) // 5
    corrupt[start:start + len(corrupt) // 2] = rng.integers(0, 256, len(corrupt) // 2, dtype=np.uint8).tobytes()
    files["corrupt"] = root / "corrupt.mp4"
    files["corrupt"].write_bytes(bytes(corrupt))
    files["missing"] = root / "does-not-exist.mp4"
    return {k: str(v) for k, v in files.items()}


@pytest.fixture(scope="session")
def cremad_clips():
    paths = sorted(os.path.join(CREMAD_DIR, f) for f in os.listdir(CREMAD_DIR) if f.endswith(".flv"))
    assert len(paths) == 6
    return paths


@pytest.fixture(scope="session")
def astronaut():
    from skimage import data

    return data.astronaut()


@pytest.fixture(scope="session")
def sample_videos(tmp_path_factory):
    """A small sample set (7 classes x 1 train + 1 val clip) in AFEW layout: (folder, clip count)."""
    from raylib.sample import SampleConfig, generate_sample_set

    root = str(tmp_path_factory.mktemp("sample") / "videos")
    return root, len(generate_sample_set(SampleConfig(out_dir=root, train_per_class=1, val_per_class=1)))


@pytest.fixture(scope="module")
def mlflow_uri(tmp_path_factory):
    """A fresh SQLite MLflow store for the module (MLFLOW_TRACKING_URI)."""
    root = tmp_path_factory.mktemp("mlflow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root}/mlflow.db"
    yield os.environ["MLFLOW_TRACKING_URI"]
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server():
    """A real S3-speaking HTTP server (moto) on 127.0.0.1, with AWS_* pointed at it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture
def s3_bucket(s3_server):
    """A fresh bucket on the moto server; yields its s3:// URI."""
    import uuid

    import s3fs

    name = f"b-{uuid.uuid4().hex[:12]}"
    fs = s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing")
    fs.mkdir(name)
    return f"s3://{name}"


def _load_job(name: str):
    """Import jobs/<name>.py as a module (jobs/ is not a package)."""
    import importlib.util
    import sys

    spec = importlib.util.spec_from_file_location(f"jobs_{name}", os.path.join(os.path.dirname(HERE), "jobs", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    sys.modules[f"jobs_{name}"] = module
    spec.loader.exec_module(module)
    return module


_load_job("extract")
