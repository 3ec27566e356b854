"""Every YAML file under cluster/ has the fields its tool requires; none is left unchecked.

Shapes: KubeRay (apiVersion ray.io/*), other Kubernetes objects, and Ray cluster launcher
configs. A document of any other shape fails, so a new file cannot slip in untested.
"""

from __future__ import annotations

import re
import shlex
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

CLUSTER = Path(__file__).resolve().parent.parent / "cluster"
YAML_FILES = sorted([*CLUSTER.rglob("*.yaml"), *CLUSTER.rglob("*.yml")])


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs, f"{path} holds no YAML document"
    for doc in docs:
        assert isinstance(doc, dict), f"{path}: a document is not a mapping"
    return docs


def all_documents() -> list[dict[str, Any]]:
    return [doc for path in YAML_FILES for doc in documents(path)]


def pod_specs(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The pod specs of a RayCluster (head and worker groups) or a Deployment."""
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        yield spec["headGroupSpec"]["template"]["spec"]
        for group in spec["workerGroupSpecs"]:
            yield group["template"]["spec"]
    elif doc["kind"] == "Deployment":
        yield spec["template"]["spec"]


def gpu_limit(container: dict[str, Any]) -> int:
    return int(container.get("resources", {}).get("limits", {}).get("nvidia.com/gpu", 0))


# ----------------------------------------------------------------------------- one document


def check_kuberay(doc: dict[str, Any]) -> None:
    assert doc["apiVersion"].startswith("ray.io/"), doc["apiVersion"]
    assert doc["kind"] in ("RayCluster", "RayJob"), f"unexpected KubeRay kind {doc['kind']}"
    assert doc["metadata"]["name"]
    spec = doc["spec"]
    assert isinstance(spec, dict)
    if doc["kind"] == "RayCluster":
        check_raycluster_spec(spec)
    else:
        command = shlex.split(spec["entrypoint"])
        assert command[:2] == ["dcn-ray", "sweep"], (
            f"RayJob entrypoint does not run `dcn-ray sweep`: {spec['entrypoint']}"
        )
        assert "--storage" in command and "--tracking-uri" in command
        assert ("rayClusterSpec" in spec) != ("clusterSelector" in spec), (
            "a RayJob needs rayClusterSpec or clusterSelector"
        )
        if "rayClusterSpec" in spec:
            check_raycluster_spec(spec["rayClusterSpec"])


def check_raycluster_spec(spec: dict[str, Any]) -> None:
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict)
    head_containers = head["template"]["spec"]["containers"]
    assert head_containers and all(c["image"] for c in head_containers)
    assert all(gpu_limit(c) == 0 for c in head_containers), "the head runs the driver; it should hold no GPU"
    groups = spec["workerGroupSpecs"]
    assert groups, "no worker group"
    for group in groups:
        assert group["groupName"]
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"], group["groupName"]
        containers = group["template"]["spec"]["containers"]
        assert containers and all(c["image"] for c in containers)
        for value in group.get("rayStartParams", {}).values():
            assert isinstance(value, str), f"rayStartParams values must be strings, got {value!r}"
    gpu_groups = [g for g in groups if any(gpu_limit(c) >= 1 for c in g["template"]["spec"]["containers"])]
    assert gpu_groups, "no worker group with nvidia.com/gpu limits"
    for group in gpu_groups:
        for container in group["template"]["spec"]["containers"]:
            requests = container["resources"].get("requests", {})
            assert int(requests.get("nvidia.com/gpu", gpu_limit(container))) == gpu_limit(container), (
                "GPU requests must equal limits"
            )


def check_kubernetes(doc: dict[str, Any]) -> None:
    assert isinstance(doc["apiVersion"], str) and doc["apiVersion"]
    assert isinstance(doc["kind"], str) and doc["kind"]
    assert doc["metadata"]["name"]
    if doc["kind"] == "Deployment":
        selector = doc["spec"]["selector"]["matchLabels"]
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), (
            f"Deployment {doc['metadata']['name']}: selector does not match its pods"
        )
        assert all(c["image"] for c in doc["spec"]["template"]["spec"]["containers"])
    if doc["kind"] == "PersistentVolumeClaim":
        assert doc["spec"]["accessModes"] and doc["spec"]["resources"]["requests"]["storage"]


def check_launcher(doc: dict[str, Any]) -> None:
    assert doc["cluster_name"]
    assert doc["provider"]["type"]
    types = doc["available_node_types"]
    assert isinstance(types, dict) and types
    assert doc["head_node_type"] in types, f"head_node_type {doc['head_node_type']!r} is not one of {sorted(types)}"
    head = types[doc["head_node_type"]]
    assert head.get("resources", {}).get("GPU", 0) == 0, "the head runs the driver; it should hold no GPU"
    workers = {name: t for name, t in types.items() if name != doc["head_node_type"]}
    gpu_types = [t for t in workers.values() if t.get("resources", {}).get("GPU", 0) >= 1]
    assert gpu_types, "no worker node type declares GPU resources"
    for node_type in workers.values():
        assert 0 <= node_type.get("min_workers", 0) <= node_type["max_workers"] <= doc["max_workers"]
    assert doc["head_start_ray_commands"] and doc["worker_start_ray_commands"]
    assert any("--head" in command for command in doc["head_start_ray_commands"])


def check_document(doc: dict[str, Any]) -> str:
    """Check one document against the tool it is for; return that tool's name."""
    if str(doc.get("apiVersion", "")).startswith("ray.io/"):
        check_kuberay(doc)
        return "kuberay"
    if "apiVersion" in doc and "kind" in doc:
        check_kubernetes(doc)
        return "kubernetes"
    if "cluster_name" in doc and "provider" in doc:
        check_launcher(doc)
        return "launcher"
    raise AssertionError(f"a YAML document of unknown shape (keys {sorted(doc)[:8]})")


# ----------------------------------------------------------------------------- tests


def test_there_are_configs_for_every_tool():
    assert {check_document(doc) for doc in all_documents()} == {"kuberay", "kubernetes", "launcher"}


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(CLUSTER)))
def test_every_document_has_the_fields_its_tool_requires(path):
    for doc in documents(path):
        check_document(doc)


@pytest.mark.parametrize(
    "doc",
    [
        {"name": "not a cluster"},
        {"apiVersion": "ray.io/v1", "kind": "RayService", "metadata": {"name": "x"}, "spec": {}},
        {
            "apiVersion": "ray.io/v1",
            "kind": "RayJob",
            "metadata": {"name": "x"},
            "spec": {"entrypoint": "python train.py", "clusterSelector": {}},
        },
        {
            "cluster_name": "c",
            "provider": {"type": "aws"},
            "max_workers": 1,
            "available_node_types": {"h": {}},
            "head_node_type": "head",
        },
    ],
    ids=["unknown-shape", "unknown-kuberay-kind", "rayjob-not-a-sweep", "head-type-missing"],
)
def test_checker_rejects_bad_documents(doc):
    with pytest.raises((AssertionError, KeyError)):
        check_document(doc)


def test_launcher_config_passes_rays_own_schema():
    jsonschema = pytest.importorskip("jsonschema")  # noqa: F841
    from ray.autoscaler._private.util import validate_config

    launchers = [doc for doc in all_documents() if check_document(doc) == "launcher"]
    assert launchers
    for doc in launchers:
        validate_config(doc)


def test_kuberay_pieces_fit_together():
    """The RayJob targets the RayCluster, writes to its shared volume, logs to the MLflow Service."""
    by_kind: dict[str, dict[str, dict]] = {}
    for doc in all_documents():
        if "kind" in doc:
            by_kind.setdefault(doc["kind"], {})[doc["metadata"]["name"]] = doc
    (job,) = by_kind["RayJob"].values()
    cluster = by_kind["RayCluster"][job["spec"]["clusterSelector"]["ray.io/cluster"]]
    command = shlex.split(job["spec"]["entrypoint"])
    storage = command[command.index("--storage") + 1]
    tracking = command[command.index("--tracking-uri") + 1]
    for pod in pod_specs(cluster):
        mounts = {m["mountPath"]: m["name"] for c in pod["containers"] for m in c.get("volumeMounts", [])}
        shared = [path for path in mounts if storage.startswith(path.rstrip("/") + "/")]
        assert shared, f"--storage {storage} is on no volume of every Ray pod"
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[shared[0]])
        claim = by_kind["PersistentVolumeClaim"][volume["persistentVolumeClaim"]["claimName"]]
        assert "ReadWriteMany" in claim["spec"]["accessModes"], "Tune's storage must be shared by all nodes"
    host, port = re.match(r"http://([^:/]+):(\d+)", tracking).groups()
    service = by_kind["Service"][host]
    assert int(port) in [p["port"] for p in service["spec"]["ports"]]
    assert any(
        service["spec"]["selector"].items() <= d["spec"]["template"]["metadata"]["labels"].items()
        for d in by_kind["Deployment"].values()
    )
    # The submitter authenticates with the same Secret the cluster uses.
    secret = cluster["spec"]["authOptions"]["secretName"]
    env = job["spec"]["submitterPodTemplate"]["spec"]["containers"][0]["env"]
    refs = [e["valueFrom"]["secretKeyRef"]["name"] for e in env if e["name"] == "RAY_AUTH_TOKEN"]
    assert refs == [secret]


def test_local_cluster_script_is_valid_bash():
    subprocess.run(["bash", "-n", str(CLUSTER / "local-cluster.sh")], check=True, timeout=30)


def test_dockerfile_installs_torch_then_ray_then_dcn_ray():
    lines = (CLUSTER / "Dockerfile").read_text().splitlines()
    installs = [line for line in lines if "pip install" in line]

    def first(pattern: str) -> int:
        return next(i for i, line in enumerate(installs) if re.search(pattern, line))

    assert first(r"torch==") < first(r"ray\[default") < first(r"pip install --no-cache-dir \.")
    ignore = (CLUSTER / "Dockerfile.dockerignore").read_text().split()
    assert {"!dcn_ray/", "!pyproject.toml", "!jobs/"} <= set(ignore)
