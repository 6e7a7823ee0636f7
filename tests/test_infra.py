"""infra/ (cluster image, KubeRay manifests, the team compose stack), cluster.yaml and mlflow/server.sh
cross-checked against each other and against what the code and the installed packages really use:
versions, image names, ports, custom resources, job flags and environment variable names."""

import os
import re
import shlex
import subprocess
import sys

import pytest
import yaml

import raylib
from raylib.config import flag_values, parse

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFRA = os.path.join(ROOT, "infra")
SITE = os.path.dirname(os.path.dirname(yaml.__file__))  # site-packages of this venv


def read(*parts):
    with open(os.path.join(ROOT, *parts)) as f:
        return f.read()


def load(*parts):
    return list(yaml.safe_load_all(read(*parts)))


def makefile_var(name):
    return re.search(rf"^{name} \?= (\S+)", read("Makefile"), re.M).group(1)


def containers(spec):
    return spec["template"]["spec"]["containers"]


@pytest.fixture(scope="module")
def raycluster():
    (doc,) = load("infra", "kuberay", "raycluster.yaml")
    return doc


@pytest.fixture(scope="module")
def rayjobs():
    return {name: load("infra", "kuberay", name)[0] for name in ("rayjob-extract.yaml", "rayjob-tune.yaml")}


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(read("infra", "compose.yaml"))


def test_the_image_pins_what_the_tests_run():
    import mlflow
    import ray
    import torch
    import torchvision

    docker = read("infra", "Dockerfile")
    base = re.search(r"^ARG BASE=rayproject/ray:(\S+)-py(\d+)-gpu$", docker, re.M)
    assert base, "the base image must be a rayproject/ray:<version>-py<XY>-gpu tag"
    assert base.group(1) == ray.__version__
    assert base.group(2) == f"{sys.version_info.major}{sys.version_info.minor}"
    pins = dict(re.findall(r'"(torch|torchvision)==([\d.]+)"', docker))
    assert pins == dict(re.findall(r"(torch|torchvision)==([\d.]+)", read("Makefile")))
    assert torch.__version__.startswith(pins["torch"]) and torchvision.__version__.startswith(pins["torchvision"])
    for src in re.findall(r"^COPY (?:--chown=\S+ )?(.+) \S+$", docker, re.M):
        for path in src.split():
            assert os.path.exists(os.path.join(ROOT, path)), f"Dockerfile copies {path}, which is not in the repository"
    assert "WORKDIR /home/ray/app" in docker
    server = read("infra", "mlflow.Dockerfile")
    assert re.search(r'"mlflow==([\d.]+)"', server).group(1) == mlflow.__version__
    assert "FROM python:3.11" in server and "COPY mlflow/server.sh" in server


def test_one_image_name_everywhere(raycluster):
    image = makefile_var("IMAGE")
    assert image.rsplit(":", 1)[1] == raylib.__version__
    cluster = yaml.safe_load(read("cluster.yaml"))
    assert cluster["docker"]["image"] == image
    groups = [raycluster["spec"]["headGroupSpec"], *raycluster["spec"]["workerGroupSpecs"]]
    assert {c["image"] for g in groups for c in containers(g)} == {image}


def test_raycluster_matches_ray_and_cluster_yaml(raycluster):
    import ray

    assert raycluster["apiVersion"] == "ray.io/v1" and raycluster["kind"] == "RayCluster"
    spec = raycluster["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["authOptions"] == {"mode": "token"}
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0" and head["serviceType"] == "ClusterIP"
    ports = {p["name"]: p["containerPort"] for c in containers(head) for p in c["ports"]}
    assert ports == {"gcs-server": 6379, "dashboard": 8265, "client": 10001}
    cluster = yaml.safe_load(read("cluster.yaml"))
    assert "--port=6379" in " ".join(cluster["head_start_ray_commands"])  # the same GCS port on both launchers
    assert not any(g["template"]["spec"].get("hostNetwork") for g in [head, *spec["workerGroupSpecs"]])
    declared = {}
    for group in spec["workerGroupSpecs"]:
        resources = yaml.safe_load(yaml.safe_load(group["rayStartParams"]["resources"]))  # '"{...}"' -> dict
        declared[group["groupName"]] = resources
        assert group["minReplicas"] <= group["maxReplicas"]
    assert declared == {"cpu-workers": {"decode_node": 1}, "gpu-workers": {"gpu_node": 1}}
    gpu = next(g for g in spec["workerGroupSpecs"] if g["groupName"] == "gpu-workers")
    assert all(c["resources"]["limits"]["nvidia.com/gpu"] == "1" for c in containers(gpu))
    launcher = {t: n.get("resources", {}) for t, n in cluster["available_node_types"].items()}
    assert launcher["cpu_worker"] == {"decode_node": 1} and launcher["gpu_worker"] == {"gpu_node": 1}


def entrypoint_config(job):
    """(config dataclass, parsed config) of a RayJob's entrypoint, parsed by the job's own parser."""
    from raylib.extract.config import ExtractConfig
    from raylib.train.sweep import TuneConfig

    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[0] == "python" and argv[1].startswith("/home/ray/app/jobs/")
    script = os.path.relpath(argv[1], "/home/ray/app")
    assert os.path.exists(os.path.join(ROOT, script))
    cls = {"jobs/extract.py": ExtractConfig, "jobs/tune.py": TuneConfig}[script]
    return parse(cls, "", argv[2:])  # exits with argparse's message on an unknown or bad flag


def test_rayjobs_run_the_jobs_with_flags_the_jobs_accept(raycluster, rayjobs):
    resources = {r for g in raycluster["spec"]["workerGroupSpecs"]
                 for r in yaml.safe_load(yaml.safe_load(g["rayStartParams"]["resources"]))}
    for name, job in rayjobs.items():
        assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
        assert job["spec"]["clusterSelector"] == {"ray.io/cluster": raycluster["metadata"]["name"]}
        given = flag_values(entrypoint_config(job))
        asked = {given[f] for f in ("cpu_resource", "feature_resource", "worker_resource") if given.get(f)}
        assert asked and asked <= resources, f"{name} asks for resources no worker group declares: {asked - resources}"
    extract = entrypoint_config(rayjobs["rayjob-extract.yaml"])
    assert extract.input.startswith("s3://") and extract.output.startswith("s3://") and extract.gpu_actors > 0
    tune = entrypoint_config(rayjobs["rayjob-tune.yaml"]).train
    assert tune.use_gpu and tune.store == extract.output  # the sweep reads what extraction wrote


def read_by(name, package_dirs):
    """Files that mention an environment variable name: this project's code, or the package that reads it."""
    ours = subprocess.run(["grep", "-rlF", name, "raylib", "jobs", "mlflow/server.sh"], cwd=ROOT,
                          capture_output=True, text=True).stdout.split()
    theirs = []
    for pkg in package_dirs:
        theirs += subprocess.run(["grep", "-rlF", "--include=*.py", name, os.path.join(SITE, pkg)],
                                 capture_output=True, text=True).stdout.split()
    return ours + theirs


READERS = {"MLFLOW_": ["mlflow"], "RAY_": ["ray/_private", "ray/_common", "ray/util"], "AWS_": ["botocore"]}


def test_every_environment_variable_is_one_the_code_or_its_libraries_read(raycluster, compose):
    names = set()
    for group in [raycluster["spec"]["headGroupSpec"], *raycluster["spec"]["workerGroupSpecs"]]:
        for c in containers(group):
            names |= {e["name"] for e in c.get("env", [])}
    names |= set(compose["services"]["mlflow"]["environment"])
    names |= set(re.findall(r"export ([A-Z_]+)=", " ".join(yaml.safe_load(read("cluster.yaml"))["setup_commands"])))
    names |= set(re.findall(r"([A-Z][A-Z0-9_]+)=", " ".join(re.findall(r"^ENV (.+?)(?:\n(?! ))", read("infra", "Dockerfile") + "\n", re.M | re.S))))
    assert {"MLFLOW_TRACKING_URI", "MLFLOW_BACKEND_STORE_URI", "MLFLOW_ARTIFACTS_DESTINATION", "MLFLOW_S3_ENDPOINT_URL",
            "RAY_USAGE_STATS_ENABLED"} <= names
    interpreter = subprocess.run([sys.executable, "--help-env"], capture_output=True, text=True).stdout
    unread = []
    for name in sorted(names):
        if name.startswith("PYTHON") and re.search(rf"^{name}\b", interpreter, re.M):
            continue  # read by the interpreter itself
        packages = next((pkgs for prefix, pkgs in READERS.items() if name.startswith(prefix)), [])
        if not read_by(name, packages):
            unread.append(name)
    assert unread == [], f"set in infra but read by nothing: {unread}"


def test_compose_stack_publishes_on_loopback_and_holds_no_secret(compose):
    services = compose["services"]
    assert set(services) == {"postgres", "minio", "buckets", "mlflow"}
    for name, svc in services.items():
        for port in svc.get("ports", []):
            assert port.startswith("${BIND:-127.0.0.1}:"), f"{name} publishes {port} beyond loopback by default"
        for key, value in (svc.get("environment") or {}).items():
            if re.search(r"PASSWORD|SECRET|ACCESS_KEY", key) or "://" in str(value) and "@" in str(value):
                assert "${" in str(value), f"{name}.{key} holds a literal credential"
    mlflow = services["mlflow"]["environment"]
    assert mlflow["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql://mlflow:${POSTGRES_PASSWORD}@postgres:5432/")
    assert mlflow["MLFLOW_ARTIFACTS_DESTINATION"].startswith("s3://mlflow/")
    assert mlflow["MLFLOW_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert services["mlflow"]["build"]["dockerfile"] == "infra/mlflow.Dockerfile"
    # one port for the tracking server: compose, mlflow/server.sh and the clusters' MLFLOW_TRACKING_URI
    assert services["mlflow"]["ports"] == [f"${{BIND:-127.0.0.1}}:{mlflow['MLFLOW_PORT']}:{mlflow['MLFLOW_PORT']}"]
    assert re.search(r'MLFLOW_PORT="\$\{MLFLOW_PORT:-(\d+)\}"', read("mlflow", "server.sh")).group(1) == mlflow["MLFLOW_PORT"]
    assert read("infra", "kuberay", "raycluster.yaml").count(f":{mlflow['MLFLOW_PORT']}\"") >= 1
    needed = set(re.findall(r"\$\{(\w+):\?", read("infra", "compose.yaml")))
    example = set(re.findall(r"^(\w+)=", read("infra", "stack.env.example"), re.M))
    assert needed and needed <= example
    assert "infra/.env" in read(".gitignore").split()


def test_mlflow_server_script_defaults_to_the_embedded_store_on_loopback():
    script = read("mlflow", "server.sh")
    assert 'MLFLOW_HOST="${MLFLOW_HOST:-127.0.0.1}"' in script
    assert 'sqlite:///${HERE}/mlflow.db' in script and "${HERE}/artifacts" in script
    from raylib import tracking

    assert tracking.REPO_STORE == os.path.join(ROOT, "mlflow", "mlflow.db")  # what the jobs write by default
    assert "mlflow-ui:" in read("Makefile") and "bash mlflow/server.sh" in read("Makefile")


def test_stage_placement_asks_a_share_of_the_declared_resources():
    from raylib.runtime import placement
    from raylib.train.job import TrainConfig, worker_resources

    cluster = yaml.safe_load(read("cluster.yaml"))
    for node_type, resource in (("cpu_worker", "decode_node"), ("gpu_worker", "gpu_node")):
        declared = cluster["available_node_types"][node_type]["resources"][resource]
        asked = placement(resource)[resource]
        assert 0 < asked and declared / asked >= 64  # many tasks per node: CPUs and GPUs bound them
    assert placement("") == {}
    assert worker_resources(TrainConfig(worker_resource="gpu_node", cpus_per_worker=2)) == {
        "CPU": 2, "gpu_node": placement("gpu_node")["gpu_node"]}
