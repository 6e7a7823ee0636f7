"""cluster.yaml is a valid Ray cluster-launcher config (schema shipped in the `ray` package)."""

import os

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load():
    with open(os.path.join(ROOT, "cluster.yaml")) as f:
        return yaml.safe_load(f)


def test_cluster_yaml_validates_against_rays_schema():
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = prepare_config(load())
    validate_config(config)  # raises on a schema violation
    types = config["available_node_types"]
    assert set(types) == {"head", "cpu_worker", "gpu_worker"} and config["head_node_type"] == "head"
    assert types["head"]["resources"]["CPU"] == 0
    assert sum(t.get("max_workers", 0) for t in types.values()) <= config["max_workers"]


def test_no_credentials_in_the_cluster_file():
    text = open(os.path.join(ROOT, "cluster.yaml")).read()
    for word in ("AWS_SECRET_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "aws_secret", "AKIA"):
        assert word not in text
    assert "IamInstanceProfile" in text  # S3 access comes from the instance role
    # the dashboard (job submission) is not exposed beyond the head's loopback
    assert "--dashboard-host=127.0.0.1" in " ".join(load()["head_start_ray_commands"])
