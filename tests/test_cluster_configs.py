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


# ---------------------------------------------------------------------------------- CUDA and drivers

# The NVIDIA driver branch each CUDA toolkit release shipped with: code built for CUDA x.y (torch's wheels, a
# CUDA container) needs at least this driver. (A 12.x build also starts on older 12.x drivers through minor-version
# compatibility, without JIT for the newer toolkit; across a major version nothing runs.)
MIN_DRIVER = {
    (12, 4): 550,
    (12, 5): 555,
    (12, 6): 560,
    (12, 8): 570,
    (12, 9): 575,
    (13, 0): 580,
    (13, 1): 590,
    (13, 2): 595,
}
# A config whose image names do not show the host driver carries it in a comment line like this one.
DRIVER_MARKER = re.compile(r"^#\s*uniproto:\s*nvidia-driver\s*>=\s*(\d+)\s*$", re.M)


def pinned_torch_cuda(pins: dict[str, str]) -> tuple[int, int]:
    """(major, minor) CUDA of the torch in the lock file: its local tag (`2.14.1+cu130`) when it has one, else
    the CUDA runtime wheel pip installed with it (`nvidia-cuda-runtime==13.0.96`, `...-cu12==12.8.90`)."""
    tag = re.search(r"\+cu(\d+)(\d)$", pins["torch"])
    if tag:
        return int(tag[1]), int(tag[2])
    for name in ("nvidia-cuda-runtime", "nvidia-cuda-runtime-cu13", "nvidia-cuda-runtime-cu12"):
        if name in pins:
            major, minor = pins[name].split(".")[:2]
            return int(major), int(minor)
    raise AssertionError(
        f"torch=={pins['torch']} in constraints.txt is not a CUDA build: the GPU configs need one"
    )


def min_driver(cuda: tuple[int, int]) -> int:
    assert cuda in MIN_DRIVER, f"CUDA {cuda[0]}.{cuda[1]}: add its driver branch to MIN_DRIVER"
    return MIN_DRIVER[cuda]


def _image_cuda(image: str) -> tuple[int, int] | None:
    """CUDA (major, minor) of a Ray image from its tag (`-cu130` -> (13, 0)); None for a CPU image."""
    m = re.search(r"-cu(1\d)(\d)$", image)
    return (int(m[1]), int(m[2])) if m else None


def host_driver(image_names: list[str], text: str) -> int | None:
    """The host's NVIDIA driver branch: from an image name that shows it (GCP's `...-nvidia-580` families), else
    from the config's marker line; None when neither says."""
    for name in image_names:
        m = re.search(r"-nvidia-(\d{3})(?:-|$)", name)
        if m:
            return int(m[1])
    m = DRIVER_MARKER.search(text)
    return int(m[1]) if m else None


def gpu_pairing_problems(gpu_image: str, driver: int | None, pins: dict[str, str]) -> list[str]:
    """What is wrong between the pinned torch, the GPU container image and the GPU host's driver ([] if nothing)."""
    torch_cuda = pinned_torch_cuda(pins)
    image_cuda = _image_cuda(gpu_image)
    problems = []
    if image_cuda is None:
        problems.append(f"{gpu_image}: no CUDA tag (-cuXY); `-gpu` is Ray's alias of an old CUDA")
    elif image_cuda[0] != torch_cuda[0]:
        problems.append(f"{gpu_image}: CUDA {image_cuda[0]} beside a CUDA {torch_cuda[0]} torch")
    need = max([min_driver(torch_cuda)] + ([min_driver(image_cuda)] if image_cuda else []))
    if driver is None:
        problems.append(f"no driver stated: name a driver image or add '# uniproto: nvidia-driver >= {need}'")
    elif driver < need:
        problems.append(f"driver {driver} < {need}, which CUDA {torch_cuda[0]}.{torch_cuda[1]} needs")
    return problems


def test_lock_file_names_the_cuda_of_the_installed_torch():
    import torch

    cuda = pinned_torch_cuda(_pins())
    assert min_driver(cuda)
    if torch.version.cuda:  # the lock file is this venv's freeze: a CUDA build here is the pinned one
        assert tuple(int(x) for x in torch.version.cuda.split(".")[:2]) == cuda


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
        assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-{PYTHON_TAG}(-cu\d+)?", image), image
    assert _image_cuda(nodes["gpu_train"]["docker"]["worker_image"])  # CUDA build; driver checked below
    assert _image_cuda(raw["docker"]["head_image"]) is None  # CPU images where no GPU is
    assert _image_cuda(nodes["cpu_data"]["docker"]["worker_image"]) is None
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
        assert re.fullmatch(rf"rayproject/ray:{re.escape(RAY_VERSION)}-{PYTHON_TAG}(-cu\d+)?", c["image"]), c[
            "image"
        ]
        assert bool(_image_cuda(c["image"])) == (group == "gpu-train"), f"{where}: {group}: {c['image']}"
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


# ---------------------------------------------------------------------------------- GPU images and drivers


def _launcher_gpu_pairing(raw: dict, text: str) -> list[str]:
    node = raw["available_node_types"]["gpu_train"]
    config = node["node_config"]
    host_images = [d["initializeParams"]["sourceImage"] for d in config.get("disks", []) if d.get("boot")]
    host_images += [config["ImageId"]] if "ImageId" in config else []
    return gpu_pairing_problems(node["docker"]["worker_image"], host_driver(host_images, text), _pins())


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_launcher_gpu_nodes_boot_a_driver_for_the_pinned_torch(name):
    text = (CLUSTER / name).read_text()
    raw = yaml.safe_load(text)
    assert _launcher_gpu_pairing(raw, text) == []
    gpu = raw["available_node_types"]["gpu_train"]
    assert raw["docker"]["worker_image"] == gpu["docker"]["worker_image"]  # the default GPU image is the same
    if name == "aws.yaml":  # no ImageId: Ray boots its own default AMI, a CUDA 11 one
        assert all("ImageId" in n["node_config"] for n in raw["available_node_types"].values())


def _kuberay_gpu_images(name: str) -> list[str]:
    images = []
    for doc in yaml.safe_load_all((KUBERAY / name).read_text()):
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        for group in spec.get("workerGroupSpecs", []):
            if group["groupName"] == "gpu-train":
                images += [c["image"] for c in _containers(group["template"])]
    return images


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob-pretrain.yaml", "rayjob-sweep.yaml"])
def test_kuberay_gpu_image_and_node_pool_driver_match_the_pinned_torch(name):
    text = (KUBERAY / name).read_text()
    (image,) = _kuberay_gpu_images(name)
    # The node pool's driver is outside the manifest: the marker states what the pool must have.
    assert gpu_pairing_problems(image, host_driver([], text), _pins()) == []


def test_the_driver_check_catches_mismatches():
    """What the configs shipped before: a driver-570 GCP image, an AWS config naming no image or driver, Ray's
    `-gpu` alias (CUDA 12.1); and a CUDA 12 build beside a CUDA 13 torch."""
    pins = _pins()
    gcp_text = (CLUSTER / "gcp.yaml").read_text()
    old_gcp = yaml.safe_load(
        gcp_text.replace("common-cu129-ubuntu-2204-nvidia-580", "common-cu128-ubuntu-2204-nvidia-570")
    )
    assert any("driver 570 < 580" in p for p in _launcher_gpu_pairing(old_gcp, gcp_text))
    aws_text = DRIVER_MARKER.sub("", (CLUSTER / "aws.yaml").read_text())
    old_aws = yaml.safe_load(aws_text)
    del old_aws["available_node_types"]["gpu_train"]["node_config"]["ImageId"]
    assert any("no driver stated" in p for p in _launcher_gpu_pairing(old_aws, aws_text))
    assert any(
        "no CUDA tag" in p for p in gpu_pairing_problems(f"rayproject/ray:{RAY_VERSION}-py311-gpu", 580, pins)
    )
    assert any(
        "CUDA 12 beside" in p
        for p in gpu_pairing_problems(f"rayproject/ray:{RAY_VERSION}-py311-cu128", 580, pins)
    )
    cu12 = {**pins, "torch": "2.14.1+cu128"}
    assert pinned_torch_cuda(cu12) == (12, 8) and gpu_pairing_problems("x-cu128", 570, cu12) == []
    assert pinned_torch_cuda({"torch": "2.9.0", "nvidia-cuda-runtime-cu12": "12.8.90"}) == (12, 8)
    with pytest.raises(AssertionError, match="not a CUDA build"):
        pinned_torch_cuda({"torch": "2.14.1+cpu"})


# ---------------------------------------------------------------------------------- GPU configs

# Measured 2026-12-04 with `uniproto benchmark data` (cluster/README.md, "How the CPU numbers were derived"):
# CPU-seconds per 1,000 images at 224 px from 256-384 px JPEG shards, the whole stream and its text stage.
STREAM_CPU_S_PER_1K = 2.13
TEXT_CPU_S_PER_1K = 0.105
GPU_SAMPLES_PER_S = 2000  # assumed: ViT-B/16 at 224 px in bf16 on one H100/H200
MARGIN = 1.5
RAY_VCPUS = 4  # Ray's daemons and the driver on a node, outside Ray's logical CPUs
GPUS_PER_NODE = 8
# 8-GPU machines: a2-highgpu-8g and p4d.24xlarge (96 vCPU), p5.48xlarge (192), a3-highgpu-8g (208), and the
# KubeRay gpu-train pod (88 CPUs of a 96-vCPU node)
NODE_VCPUS = (88, 96, 192, 208)


@pytest.mark.parametrize("name", ["gpu-node.yaml", "cluster.yaml"])
def test_gpu_configs_validate_and_fit_every_8_gpu_node(name):
    from system.config import load_config

    cfg = load_config(REPO / "pipelines" / "configs" / name)
    assert cfg.model.arch == "ViT-B-16" and cfg.data.image_size == 224
    assert cfg.train.use_gpu and cfg.train.precision == "bf16" and cfg.train.zero_stage in (1, 2)
    assert cfg.loss.local_loss
    nodes, rest = divmod(cfg.train.num_workers, GPUS_PER_NODE)
    assert nodes >= 1 and rest == 0, "whole 8-GPU nodes"
    assert cfg.data.filter_actors % nodes == 0, "the same text actors per node"
    actors = cfg.data.filter_actors // nodes
    demand = GPUS_PER_NODE * GPU_SAMPLES_PER_S * MARGIN  # samples/s one node's data stage must sustain
    for vcpus in NODE_VCPUS:
        decode_vcpus = vcpus - GPUS_PER_NODE * cfg.train.cpus_per_worker - actors * cfg.data.filter_actor_cpus
        assert (decode_vcpus - RAY_VCPUS) * 1000 / STREAM_CPU_S_PER_1K >= demand, f"{vcpus} vCPUs"
    assert actors * cfg.data.filter_actor_cpus * 1000 / TEXT_CPU_S_PER_1K >= demand, "text actors"
    # One decode task per logical CPU: the 2-core figure (0.375) would oversubscribe a big node's training loops.
    assert cfg.data.decode_cpus >= 1.0 and 1.0 <= cfg.train.cpus_per_worker <= 2
    if name == "gpu-node.yaml":
        assert nodes == 1 and cfg.ray.num_cpus is None  # a local Ray takes the whole node
    else:
        for launcher in ("aws.yaml", "gcp.yaml"):
            gpu = yaml.safe_load((CLUSTER / launcher).read_text())["available_node_types"]["gpu_train"]
            assert nodes <= gpu["max_workers"], f"{launcher} holds {gpu['max_workers']} GPU nodes"
    readme = (CLUSTER / "README.md").read_text()
    assert "2026-12-04" in readme and f"{STREAM_CPU_S_PER_1K}" in readme, (
        "the README's table shows the figures"
    )
