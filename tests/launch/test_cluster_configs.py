"""cluster/: the launcher YAMLs pass Ray's own schema validation, the KubeRay manifests carry the required fields
and the lock file's versions and fix Ray's ports, which their NetworkPolicies admit from their own pods only, the
runtime_env pins equal the lock file, the RayJob entrypoints are configs that validate, and Ray's own packaging
leaves runs, environments, VCS data, shards and credentials out of the upload."""

from __future__ import annotations

import copy
import re
import shlex
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
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
    from system.config import SECRET_NAME_RE

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
        "system/launch/plan.py",
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
    assert "system/launch/plan.py" in names and "pipelines/configs/demo.yaml" in names
    # Files only: Ray also writes an entry for an empty directory its dir-only pattern (`/runs/`) does not match
    # by its bare name; such an entry carries nothing.
    files = [n for n in names if not n.endswith("/")]
    assert not [
        n for n in files if n.split("/")[0] in {"runs", ".venv", ".git"} or n.endswith((".tar", ".pt"))
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
    # All of the pod's interfaces: the operator comes through the head Service, KubeRay's probes and
    # `kubectl port-forward` through the pod's loopback; the NetworkPolicy keeps it inside (checked below).
    assert head["rayStartParams"]["dashboard-host"] == "0.0.0.0", f"{where}: the head binds its dashboard"
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
    assert policy["spec"]["podSelector"]["matchLabels"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    assert cluster["apiVersion"] == "ray.io/v1" and cluster["metadata"]["name"]
    _check_cluster_spec(cluster["spec"], "raycluster.yaml")


@pytest.mark.parametrize(
    ("name", "stage"), [("rayjob-pretrain.yaml", "pretrain"), ("rayjob-sweep.yaml", "sweep")]
)
def test_kuberay_rayjob(name, stage):
    from pipelines.cli import STAGES
    from system.config import load_config
    from system.experiments.spaces import load_space
    from system.launch.plan import cluster_path_overrides

    policy, job = _docs(name)
    assert policy["kind"] == "NetworkPolicy" and policy["apiVersion"] == "networking.k8s.io/v1"
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
    assert argv[:3] == ["python", "-m", STAGES[stage]]
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


# ---------------------------------------------------------------------------------- KubeRay ports and NetworkPolicy

KUBERAY_FILES = ("raycluster.yaml", "rayjob-pretrain.yaml", "rayjob-sweep.yaml")
# Ray's ports, fixed in rayStartParams so that each manifest's NetworkPolicy can name them (cluster/README.md,
# "KubeRay"). KubeRay's probes call 52365 and 8265 by these defaults; the head declares 6379 and 8265 as container
# ports, which its Service publishes.
HEAD_PORTS = {"port": 6379, "dashboard-port": 8265, "ray-client-server-port": 10001}
NODE_PORTS = {
    "node-manager-port": 8077,
    "object-manager-port": 8076,
    "dashboard-agent-grpc-port": 8078,
    "dashboard-agent-listen-port": 52365,
    "runtime-env-agent-port": 8079,
    "metrics-export-port": 8080,
    "min-worker-port": 10002,
    "max-worker-port": 19999,
}
JOB_API = {8265}  # all that RayJob submitters and the KubeRay operator may reach
CLIENT_LABELS = {"uniproto/ray-client": "true"}
OPERATOR_NAMESPACE = "ray-system"  # the policies' value; each says to edit it to the install's namespace
NAMESPACE = "ml"  # any namespace the manifests are applied in
EVERY_PORT = frozenset(range(1, 65536))


def _ray_pods(doc: dict) -> list[tuple[str, dict, dict]]:
    """(group, rayStartParams, pod labels) per pod group, labelled as KubeRay labels the pods: the template's labels
    plus ray.io/cluster (the RayCluster's name; a RayJob's cluster is named <job>-<random>), ray.io/node-type and
    ray.io/group, which a template cannot override."""
    if doc["kind"] == "RayJob":
        spec, cluster = doc["spec"]["rayClusterSpec"], f"{doc['metadata']['name']}-x7k2q"
    else:
        spec, cluster = doc["spec"], doc["metadata"]["name"]
    groups = [("headgroup", "head", spec["headGroupSpec"])]
    groups += [(g["groupName"], "worker", g) for g in spec["workerGroupSpecs"]]
    pods = []
    for group, node_type, g in groups:
        labels = dict(g["template"].get("metadata", {}).get("labels", {}))
        labels.update({"ray.io/cluster": cluster, "ray.io/node-type": node_type, "ray.io/group": group})
        pods.append((group, g["rayStartParams"], labels))
    return pods


def _selects(selector: dict, labels: dict) -> bool:
    """A Kubernetes label selector: every matchLabels pair and matchExpression holds ({} selects everything)."""
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for e in selector.get("matchExpressions", []):
        key, op, values = e["key"], e["operator"], e.get("values", [])
        held = {
            "In": labels.get(key) in values,
            "NotIn": key in labels and labels[key] not in values,
            "Exists": key in labels,
            "DoesNotExist": key not in labels,
        }[op]
        if not held:
            return False
    return True


def _rule_ports(rule: dict) -> set[int]:
    """The TCP ports one ingress rule opens: every port when it lists none."""
    if not rule.get("ports"):
        return set(EVERY_PORT)
    ports = set()
    for p in rule["ports"]:
        assert p.get("protocol", "TCP") == "TCP" and isinstance(p["port"], int), p  # numbers, not port names
        ports |= set(range(p["port"], p.get("endPort", p["port"]) + 1))
    return ports


def _admitted(policy: dict, namespace: str, labels: dict) -> set[int]:
    """The ports a pod (its namespace, its labels) may reach on the pods the policy selects; the policy lives in
    NAMESPACE. A rule without `from` admits every source; a peer without namespaceSelector means NAMESPACE."""
    ports = set()
    for rule in policy["spec"].get("ingress", []):
        peers = rule.get("from") or [{"namespaceSelector": {}, "podSelector": {}}]
        for peer in peers:
            if "ipBlock" in peer:
                ok = True  # an address range says nothing about which pod: count it as open
            elif "namespaceSelector" in peer:
                ns = _selects(peer["namespaceSelector"], {"kubernetes.io/metadata.name": namespace})
                ok = ns and _selects(peer.get("podSelector", {}), labels)
            else:
                ok = namespace == NAMESPACE and _selects(peer["podSelector"], labels)
            if ok:
                ports |= _rule_ports(rule)
                break
    return ports


def _fixed_ports(params: dict) -> set[int]:
    """The ports one pod group's rayStartParams fix: the single ports and the worker range."""
    single = {int(v) for k, v in params.items() if k in HEAD_PORTS or k in NODE_PORTS}
    single -= {int(params["min-worker-port"]), int(params["max-worker-port"])}
    return single | set(range(int(params["min-worker-port"]), int(params["max-worker-port"]) + 1))


def kuberay_network_problems(docs: list[dict]) -> list[str]:
    """What leaves a manifest's Ray pods open or unreachable ([] if nothing): port keys a group does not fix (or
    fixes differently from the others), a head without dashboard-host, pods the NetworkPolicy does not select, a
    rule without ports or sources, fixed ports it does not admit from the cluster's own pods, and anything beyond
    the job API it admits to submitters, the operator, other pods or other clusters."""
    policies = [d for d in docs if d["kind"] == "NetworkPolicy"]
    clusters = [d for d in docs if d["kind"] in {"RayCluster", "RayJob"}]
    if len(policies) != 1 or len(clusters) != 1:
        return [f"{len(policies)} NetworkPolicies for {len(clusters)} clusters: one each"]
    (policy,), (cluster,) = policies, clusters
    problems = []
    pods = _ray_pods(cluster)
    complete = {}  # group -> its rayStartParams, for the groups that fix every port key they should
    for group, params, labels in pods:
        head = labels["ray.io/node-type"] == "head"
        keys = [*HEAD_PORTS, *NODE_PORTS] if head else list(NODE_PORTS)
        problems += [f"{group}: {k} is not fixed in rayStartParams" for k in keys if k not in params]
        problems += [
            f"{group}: {k} is {v!r}, not a string" for k, v in params.items() if not isinstance(v, str)
        ]
        if head and not params.get("dashboard-host"):
            problems.append(f"{group}: dashboard-host is not set")
        if not _selects(policy["spec"]["podSelector"], labels):
            problems.append(f"{group}: its pods are not selected by the NetworkPolicy")
        if all(k in params for k in keys):
            complete[group] = params
    fixed = set().union(*(_fixed_ports(params) for params in complete.values()))
    for group, params, labels in pods:
        if group not in complete:
            continue
        if int(params["min-worker-port"]) >= int(params["max-worker-port"]):
            problems.append(f"{group}: min-worker-port >= max-worker-port")
        admitted = _admitted(policy, NAMESPACE, labels)
        if missing := _fixed_ports(params) - admitted:
            problems.append(
                f"{group}: fixed ports {sorted(missing)[:5]} not admitted from the cluster's own pods"
            )
        if extra := admitted - fixed:
            problems.append(f"{group}: ports {sorted(extra)[:5]} admitted that no group fixes")
    node_ports = {group: {k: params[k] for k in NODE_PORTS} for group, params in complete.items()}
    if len({tuple(sorted(p.items())) for p in node_ports.values()}) > 1:
        problems.append(f"the groups fix different ports: {node_ports}")
    for i, rule in enumerate(policy["spec"].get("ingress", [])):
        if not rule.get("ports"):
            problems.append(f"ingress rule {i} lists no ports: it opens every port")
        if not rule.get("from"):
            problems.append(f"ingress rule {i} lists no sources: it admits every pod and address")
    submitter = (
        cluster["spec"].get("submitterPodTemplate", {}).get("metadata", {}).get("labels", CLIENT_LABELS)
    )
    operator = {"app.kubernetes.io/component": "kuberay-operator"}
    other_cluster = {"ray.io/cluster": "other", "ray.io/node-type": "worker", "uniproto/ray-cluster": "other"}
    for who, namespace, labels, want in [
        ("a RayJob submitter", NAMESPACE, submitter, JOB_API),
        ("the KubeRay operator", OPERATOR_NAMESPACE, operator, JOB_API),
        ("another pod of the namespace", NAMESPACE, {"app": "web"}, set()),
        ("another Ray cluster's pod", NAMESPACE, other_cluster, set()),
        ("a client-labelled pod of another namespace", "elsewhere", CLIENT_LABELS, set()),
    ]:
        got = _admitted(policy, namespace, labels)
        if got != want:
            problems.append(
                f"{who} may reach {sorted(got)[:5]}{'...' if len(got) > 5 else ''}, not {sorted(want)}"
            )
    return problems


def _ray_start(params: dict, head: bool) -> dict:
    """Ray's own CLI parses the `ray start` line KubeRay builds from rayStartParams (`--key=value`; "true" is a bare
    flag) and returns its values: an unknown flag or a non-integer port fails here as it would in the pod."""
    from ray.scripts.scripts import start

    argv = ["--head"] if head else ["--address=uniproto-head-svc:6379"]
    for key, value in sorted({**params, "block": "true"}.items()):
        argv += [f"--{key}"] if value.lower() == "true" else [f"--{key}={value}"]
    return start.make_context("ray start", argv).params


def _reserved_ports(params: dict, head: bool) -> set[int]:
    """The ports `ray start` reserves for these rayStartParams, through Ray's own check, which raises when two
    components share a port or one falls inside the worker range."""
    from ray._private.parameter import RayParams

    parsed = _ray_start(params, head)
    ray_params = RayParams(
        min_worker_port=parsed["min_worker_port"],
        max_worker_port=parsed["max_worker_port"],
        ray_client_server_port=parsed["ray_client_server_port"],
        object_manager_port=parsed["object_manager_port"],
        node_manager_port=parsed["node_manager_port"],
        dashboard_port=parsed["dashboard_port"],
        dashboard_agent_listen_port=parsed["dashboard_agent_listen_port"],
        metrics_agent_port=parsed["dashboard_agent_grpc_port"],
        runtime_env_agent_port=parsed["runtime_env_agent_port"],
        metrics_export_port=parsed["metrics_export_port"],
    )
    ray_params.gcs_server_port = parsed["port"] if head else None
    ray_params.update_pre_selected_port()
    return ray_params.reserved_ports


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_ray_ports_are_fixed_and_equal_in_every_pod_group(name):
    (cluster,) = [d for d in _docs(name) if d["kind"] in {"RayCluster", "RayJob"}]
    pods = _ray_pods(cluster)
    assert [g for g, _, _ in pods] == ["headgroup", "cpu-data", "gpu-train"]
    for group, params, labels in pods:
        head = labels["ray.io/node-type"] == "head"
        assert all(isinstance(v, str) for v in params.values()), f"{name}: {group}: KubeRay takes strings"
        want = {**HEAD_PORTS, **NODE_PORTS} if head else NODE_PORTS
        assert {k: int(v) for k, v in params.items() if k in want} == want, f"{name}: {group}"
        assert not HEAD_PORTS.keys() & params.keys() or head, f"{name}: {group}: head-only ports on a worker"
        parsed = _ray_start(params, head)
        assert parsed["min_worker_port"] < parsed["max_worker_port"]
        assert parsed["dashboard_agent_listen_port"] == 52365  # KubeRay's probes call this port
        assert _reserved_ports(params, head) >= _fixed_ports(params), f"{name}: {group}"
        if head:
            assert parsed["dashboard_host"] == "0.0.0.0" and parsed["dashboard_port"] == 8265
            (c,) = _containers(
                cluster["spec"].get("rayClusterSpec", cluster["spec"])["headGroupSpec"]["template"]
            )
            declared = {p["name"]: p["containerPort"] for p in c["ports"]}
            assert declared == {"gcs-server": parsed["port"], "dashboard": parsed["dashboard_port"]}
    readme = (CLUSTER / "README.md").read_text()
    for port in [*HEAD_PORTS.values(), *NODE_PORTS.values()]:
        assert str(port) in readme, f"cluster/README.md does not list port {port}"


@pytest.mark.parametrize("name", KUBERAY_FILES)
def test_kuberay_network_policy_admits_the_fixed_ports_and_nothing_else(name):
    docs = _docs(name)
    kinds = [d["kind"] for d in docs]
    assert kinds in (["NetworkPolicy", "RayCluster"], ["NetworkPolicy", "RayJob"]), "the policy comes first"
    assert kuberay_network_problems(docs) == []
    policy, cluster = docs
    assert policy["spec"]["policyTypes"] == ["Ingress"] and len(policy["spec"]["ingress"]) == 3
    pods = _ray_pods(cluster)
    # It selects the head and every worker group, and only this cluster's pods.
    selected = [g for g, _, labels in pods if _selects(policy["spec"]["podSelector"], labels)]
    assert selected == ["headgroup", "cpu-data", "gpu-train"]
    if cluster["kind"] == "RayCluster":  # named by KubeRay's own label
        assert policy["spec"]["podSelector"] == {
            "matchLabels": {"ray.io/cluster": cluster["metadata"]["name"]}
        }
    else:  # a RayJob's cluster is <job>-<random>: its pod templates carry the job's name instead
        assert policy["spec"]["podSelector"] == {
            "matchLabels": {"uniproto/ray-cluster": cluster["metadata"]["name"]}
        }
    # From the cluster's own pods: exactly the fixed ports, the worker range as one port..endPort entry.
    singles = sorted({*HEAD_PORTS.values(), *NODE_PORTS.values()} - {10002, 19999})
    own = policy["spec"]["ingress"][0]
    assert sorted(p["port"] for p in own["ports"] if "endPort" not in p) == singles
    assert [(p["port"], p["endPort"]) for p in own["ports"] if "endPort" in p] == [(10002, 19999)]
    for _, _, labels in pods:
        admitted = _admitted(policy, NAMESPACE, labels)
        assert admitted == set(singles) | set(range(10002, 20000))
    # The job API for clients: pods labelled uniproto/ray-client in this namespace and the operator's namespace.
    clients = policy["spec"]["ingress"][1:]
    assert [r["ports"] for r in clients] == [[{"port": 8265, "protocol": "TCP"}]] * 2
    assert clients[0]["from"] == [{"podSelector": {"matchLabels": CLIENT_LABELS}}]
    assert clients[1]["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": OPERATOR_NAMESPACE}}}
    ]
    assert "Edit to match" in (KUBERAY / name).read_text()


def test_kuberay_network_checks_catch_open_or_partial_setups():
    """What the manifests shipped before (a policy on the head only, a rule admitting every port from any Ray
    pod, workers on random ports), and one-edit slips from the current ones."""
    docs = _docs("raycluster.yaml")

    def problems(edit) -> list[str]:
        broken = copy.deepcopy(docs)
        edit(*broken)
        return kuberay_network_problems(broken)

    def old_setup(policy, cluster):
        policy["spec"]["podSelector"] = {"matchLabels": {"ray.io/node-type": "head"}}
        policy["spec"]["ingress"][0] = {
            "from": [{"podSelector": {"matchExpressions": [{"key": "ray.io/cluster", "operator": "Exists"}]}}]
        }
        for g in cluster["spec"]["workerGroupSpecs"]:
            g["rayStartParams"] = {}
        del cluster["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"]

    found = problems(old_setup)
    assert "headgroup: dashboard-host is not set" in found
    assert "gpu-train: its pods are not selected by the NetworkPolicy" in found
    assert "cpu-data: object-manager-port is not fixed in rayStartParams" in found
    assert "ingress rule 0 lists no ports: it opens every port" in found
    assert any(p.startswith("another Ray cluster's pod may reach [1, 2, 3") for p in found)

    def drop_client_ports(policy, cluster):
        del policy["spec"]["ingress"][1]["ports"]

    found = problems(drop_client_ports)
    assert "ingress rule 1 lists no ports: it opens every port" in found
    assert any(p.startswith("a RayJob submitter may reach [1, 2, 3") for p in found)

    def drop_sources(policy, cluster):
        del policy["spec"]["ingress"][2]["from"]

    found = problems(drop_sources)
    assert "ingress rule 2 lists no sources: it admits every pod and address" in found
    assert "another pod of the namespace may reach [8265], not []" in found

    def worker_port_differs(policy, cluster):
        cluster["spec"]["workerGroupSpecs"][1]["rayStartParams"]["object-manager-port"] = "8090"

    found = problems(worker_port_differs)
    assert any(p.startswith("the groups fix different ports") for p in found)
    assert "gpu-train: fixed ports [8090] not admitted from the cluster's own pods" in found

    def narrow_range(policy, cluster):
        policy["spec"]["ingress"][0]["ports"][-1]["endPort"] = 10999

    assert (
        "headgroup: fixed ports [11000, 11001, 11002, 11003, 11004] not admitted from the cluster's own pods"
        in (problems(narrow_range))
    )

    def integer_port(policy, cluster):
        cluster["spec"]["headGroupSpec"]["rayStartParams"]["port"] = 6379

    assert "headgroup: port is 6379, not a string" in problems(integer_port)

    # Ray's CLI refuses a misspelt key, and Ray's port check a port inside the worker range.
    import click

    worker = docs[1]["spec"]["workerGroupSpecs"][0]["rayStartParams"]
    with pytest.raises(click.NoSuchOption):
        _ray_start({**worker, "node-manger-port": "8077"}, head=False)
    with pytest.raises(ValueError, match="used by other components"):
        _reserved_ports({**worker, "metrics-export-port": "10005"}, head=False)


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
