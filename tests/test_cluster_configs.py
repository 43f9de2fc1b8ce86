"""cluster/: the launcher YAMLs pass Ray's own schema validation, the KubeRay manifests carry the required fields
and the lock file's versions, the runtime_env pins equal the lock file, the RayJob entrypoints are configs that
validate, and Ray's own packaging leaves runs, environments, VCS data, shards and credentials out of the upload."""

from __future__ import annotations

import copy
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "cluster"
KUBERAY = CLUSTER / "kuberay"
PYTHON_TAG = "py311"  # the lock file is a Python 3.11 environment


def _pins() -> dict[str, str]:
    pins = {}
    for line in (CLUSTER / "constraints.txt").read_text().splitlines():
        name, sep, version = line.strip().partition("==")
        if sep and not line.startswith("#"):
            pins[_norm(name)] = version
    return pins


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pyproject_deps() -> list[str]:
    import tomllib

    deps = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    return [_norm(re.split(r"[\[<>=!~; ]", d, maxsplit=1)[0]) for d in deps]


RAY_VERSION = _pins()["ray"]


def test_lock_file_pins_the_installed_ray_and_the_job_api_extras():
    import aiohttp  # noqa: F401 - ray[default]: the dashboard and job API need it
    import ray

    assert ray.__version__ == RAY_VERSION
    assert "ray[default" in (REPO / "pyproject.toml").read_text().replace(" ", "")
    from ray._private.utils import get_dashboard_dependency_error

    assert get_dashboard_dependency_error() is None


# ---------------------------------------------------------------------------------- launcher


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_config_passes_rays_schema(name):
    from ray.autoscaler._private.util import prepare_config, validate_config

    raw = yaml.safe_load((CLUSTER / name).read_text())
    validate_config(prepare_config(copy.deepcopy(raw)))  # what `ray up` runs before touching the cloud

    # The validation is real: an unknown field in a node type is refused.
    broken = copy.deepcopy(raw)
    broken["available_node_types"]["gpu_train"]["gpus_please"] = 8
    with pytest.raises(Exception, match="gpus_please"):
        validate_config(prepare_config(broken))

    nodes = raw["available_node_types"]
    assert set(nodes) == {"head", "cpu_data", "gpu_train"} and raw["head_node_type"] == "head"
    assert nodes["head"]["resources"] == {"CPU": 0}  # nothing schedules on the head
    spot = (
        name == "aws.yaml"
        and nodes["cpu_data"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    )
    spot = spot or nodes["cpu_data"]["node_config"].get("scheduling", {}).get("provisioningModel") == "SPOT"
    assert spot, "CPU data workers run on spot capacity"
    images = [raw["docker"][k] for k in ("image", "head_image", "worker_image")]
    images += [n["docker"]["worker_image"] for n in nodes.values() if "docker" in n]
    for image in images:
        assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-{PYTHON_TAG}(-gpu)?", image), image
    assert nodes["gpu_train"]["docker"]["worker_image"].endswith("-gpu")
    assert not nodes["cpu_data"]["docker"]["worker_image"].endswith("-gpu")
    head_start = " ".join(raw["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # Ray's defaults.yaml would bind 0.0.0.0
    for cmd in raw["head_start_ray_commands"][1:] + raw["worker_start_ray_commands"][1:]:
        assert "RAY_AUTH_MODE=token" in cmd
    assert raw["file_mounts"]["~/.ray/auth_token"] == "~/.ray/auth_token"  # the token file, not its content
    assert "-c ~/uniproto/cluster/constraints.txt" in " ".join(raw["setup_commands"])


# ---------------------------------------------------------------------------------- runtime_env


def _runtime_env() -> dict:
    return yaml.safe_load((CLUSTER / "runtime_env.yaml").read_text())


def _assert_pins_match_lock(packages: list[str], where: str) -> None:
    pins = _pins()
    pinned = {}
    for spec in packages:
        name, sep, version = spec.partition("==")
        assert sep, f"{where}: {spec!r} is not pinned with =="
        pinned[_norm(name)] = version
        assert pins.get(_norm(name)) == version, (
            f"{where}: {spec} but constraints.txt has {pins.get(_norm(name))}"
        )
    wanted = set(_pyproject_deps()) - {"ray"}  # ray comes with the image; a runtime_env cannot change it
    assert set(pinned) == wanted, f"{where}: pins {sorted(pinned)} != pyproject dependencies {sorted(wanted)}"


def test_runtime_env_is_valid_for_ray_and_pins_the_lock_file():
    from ray.runtime_env import RuntimeEnv

    env = _runtime_env()
    RuntimeEnv(**{k: v for k, v in env.items() if k != "working_dir"})  # Ray's own validation
    assert env["working_dir"] == "."
    _assert_pins_match_lock(env["pip"]["packages"], "cluster/runtime_env.yaml")
    from system.submit import SECRET_NAME_RE

    assert all(isinstance(v, str) for v in env["env_vars"].values())
    assert not [k for k in env["env_vars"] if SECRET_NAME_RE.search(k)]
    rayignore = [
        ln.strip()
        for ln in (REPO / ".rayignore").read_text().splitlines()
        if ln.strip() and not ln.startswith("#")
    ]
    assert env["excludes"] == rayignore  # the same rules whether or not Ray reads .gitignore


@pytest.mark.parametrize("include_gitignore", [True, False])
def test_rays_packaging_uploads_the_code_and_nothing_else(tmp_path, include_gitignore):
    """Ray's own zip function on a copy of the repo layout with every kind of thing that must stay home."""
    from ray._private.runtime_env.packaging import _zip_files

    work = tmp_path / "repo"
    wanted = [
        "system/submit.py",
        "system/data/decode.py",
        "pipelines/run.py",
        "pipelines/configs/demo.yaml",
        "tune_spaces/demo.yaml",
        "cluster/constraints.txt",
        "pyproject.toml",
    ]
    unwanted = [
        "runs/demo/report.json",
        "runs/datasets/demo/train/00000.tar",
        ".venv/lib/python3.11/site-packages/torch/__init__.py",
        ".git/HEAD",
        "mydata/train/00000.tar",
        "mydata/train/00000.parquet",
        "mydata/train/00000_stats.json",
        "system/__pycache__/submit.cpython-311.pyc",
        "uniproto.egg-info/PKG-INFO",
        "checkpoints/model.pt",
        "weights.safetensors",
        ".env",
        "deploy.pem",
        ".ray/auth_token",
        ".pytest_cache/v/cache",
    ]
    for rel in wanted + unwanted:
        (work / rel).parent.mkdir(parents=True, exist_ok=True)
        (work / rel).write_text("x")
    for name in (".rayignore", ".gitignore"):
        (work / name).write_text((REPO / name).read_text())
    out = tmp_path / "pkg.zip"
    _zip_files(str(work), _runtime_env()["excludes"], str(out), include_gitignore=include_gitignore)
    names = {n for n in zipfile.ZipFile(out).namelist() if not n.endswith("/")}
    assert set(wanted) <= names
    assert not names & set(unwanted), sorted(names & set(unwanted))


def test_the_real_repo_uploads_small(tmp_path):
    """Packaging this checkout (runs/ holds gigabytes here) gives a small zip without excluded trees."""
    from ray._private.runtime_env.packaging import _zip_files

    out = tmp_path / "pkg.zip"
    _zip_files(str(REPO), _runtime_env()["excludes"], str(out), include_gitignore=False)
    names = zipfile.ZipFile(out).namelist()
    assert "system/submit.py" in names and "pipelines/configs/demo.yaml" in names
    assert not [
        n for n in names if n.split("/")[0] in {"runs", ".venv", ".git"} or n.endswith((".tar", ".pt"))
    ]
    assert out.stat().st_size < 10 * 2**20


# ---------------------------------------------------------------------------------- KubeRay


def _docs(name: str) -> list[dict]:
    return list(yaml.safe_load_all((KUBERAY / name).read_text()))


def _containers(template: dict) -> list[dict]:
    return template["spec"]["containers"]


def _check_cluster_spec(spec: dict, where: str) -> None:
    assert spec["rayVersion"] == RAY_VERSION, where
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", f"{where}: the head service stays in-cluster"
    assert isinstance(head["rayStartParams"], dict)
    assert head["rayStartParams"].get("dashboard-host") in (None, "127.0.0.1")
    groups = spec["workerGroupSpecs"]
    assert {g["groupName"] for g in groups} == {"cpu-data", "gpu-train"}
    templates = [("head", head["template"])] + [(g["groupName"], g["template"]) for g in groups]
    for g in groups:
        for key in ("groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"):
            assert key in g, f"{where}: {g.get('groupName')}: {key}"
        assert g["minReplicas"] <= g["replicas"] <= g["maxReplicas"]
    for group, template in templates:
        (c,) = _containers(template)
        assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-{PYTHON_TAG}(-gpu)?", c["image"]), c[
            "image"
        ]
        assert c["image"].endswith("-gpu") == (group == "gpu-train"), f"{where}: {group}: {c['image']}"
        env = {e["name"]: e for e in c["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token"
        assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], "the token comes from a Secret"
        assert "value" not in env["RAY_AUTH_TOKEN"]
    gpu = next(g for g in groups if g["groupName"] == "gpu-train")
    assert _containers(gpu["template"])[0]["resources"]["limits"]["nvidia.com/gpu"]


def test_kuberay_raycluster():
    docs = _docs("raycluster.yaml")
    kinds = [d["kind"] for d in docs]
    assert kinds == ["NetworkPolicy", "RayCluster"]
    policy, cluster = docs
    assert policy["apiVersion"] == "networking.k8s.io/v1"
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/node-type": "head"}
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"], "raycluster.yaml")


@pytest.mark.parametrize(
    ("name", "stage"), [("rayjob-pretrain.yaml", "pretrain"), ("rayjob-sweep.yaml", "sweep")]
)
def test_kuberay_rayjob(name, stage):
    from system.config import load_config
    from system.spaces import load_space
    from system.submit import available_stages, cluster_path_overrides

    (job,) = _docs(name)
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    _check_cluster_spec(spec["rayClusterSpec"], name)
    assert spec["shutdownAfterJobFinishes"] is True and spec["ttlSecondsAfterFinished"] > 0
    assert spec["metadata"]["uniproto_stage"] == stage
    submitter = spec["submitterPodTemplate"]
    assert submitter["metadata"]["labels"]["uniproto/ray-client"] == "true"  # admitted by the NetworkPolicy
    (c,) = _containers(submitter)
    assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-{PYTHON_TAG}", c["image"])
    assert {e["name"] for e in c["env"]} >= {"RAY_AUTH_MODE", "RAY_AUTH_TOKEN"}

    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert re.fullmatch(r"(s3|gs|https)://\S+\.zip", env["working_dir"]), "a remote zip of the code"
    _assert_pins_match_lock(env["pip"]["packages"], name)
    base = _runtime_env()["env_vars"]
    assert set(env["env_vars"]) == set(base)

    # The entrypoint is a real stage with a config whose every value validates, with cluster-safe paths.
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", f"pipelines.{stage}"] and stage in available_stages(REPO)
    config = argv[argv.index("--config") + 1]
    sets = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    assert (REPO / config).is_file()
    cfg = load_config(REPO / config, sets)
    assert spec["metadata"]["uniproto_run_name"] == cfg.run.name
    paths = cluster_path_overrides(
        cfg, local=False, workdir=REPO, cwd=REPO, excludes=_runtime_env()["excludes"], check_data=False
    )
    assert paths["data.root"] == cfg.data.root  # already absolute: nothing to rewrite
    assert cfg.train.use_gpu and cfg.ray.storage_path
    if cfg.sweep.space:
        load_space(REPO / cfg.sweep.space, cfg)
    gpu = next(g for g in spec["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu-train")
    gpus = int(_containers(gpu["template"])[0]["resources"]["limits"]["nvidia.com/gpu"])
    assert cfg.train.num_workers <= gpus * gpu["maxReplicas"], "the GPU group can hold the Train workers"


def test_kuberay_manifests_open_nothing_outside_the_cluster():
    for path in KUBERAY.glob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert doc["kind"] not in {"Ingress", "Service", "Route", "Gateway"}, (
                f"{path.name}: {doc['kind']}"
            )
            text = yaml.safe_dump(doc)
            assert "LoadBalancer" not in text and "NodePort" not in text, path.name
