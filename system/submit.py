"""`uniproto submit`: run a pipeline stage as a Ray job on a cluster, through Ray's `JobSubmissionClient`.

    uniproto submit <stage> --config PATH [--set KEY=VALUE ...] [--address URL] [--follow] [--dry-run]
    uniproto submit status ID        the job's status and metadata as JSON
    uniproto submit logs ID [--follow]
    uniproto submit stop ID [--wait]
    uniproto submit list             uniproto jobs on the cluster

<stage> is one of the stages the caller passes in, each with the module that runs it (the `uniproto` console
script passes its own: run, sweep, ablate, pretrain, finetune); this module names none. Everything that can be checked
before the job starts is checked here, on the submitting machine: the config (types, ranges, cross-field rules),
the paths in it (dataset manifest and shards, search space, checkpoint, output and storage locations, each
against what the cluster can see), the run name, and that nothing in the job's entrypoint, runtime_env or
metadata carries a secret. A refusal names the key and exits 2; a bad config never reaches the cluster.

The job runs `python -m <the stage's module> --config <path in the working dir> --set ...` with the runtime_env of
cluster/runtime_env.yaml (working dir uploaded minus .rayignore/.gitignore/excludes). Its submission id is
`uniproto-<stage>-<run name>-<10 hex of the config hash>`: the same resolved config gets the same id, so a second
submission while the first runs is refused instead of training twice (--resubmit after it ended). Metadata:
stage, run name, config hash, git commit and whether the tree was dirty; never environment variables.

Address: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else http://127.0.0.1:8265. Token: Ray's own
lookup (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); when RAY_AUTH_MODE is unset and a token exists,
token mode is switched on for this process (Ray 2.60's client sends no token otherwise). The token is never printed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from system.config import SECRET_NAME_RE, Config, ConfigError, load_config, read_yaml
from system.user_errors import exit_2_on_user_errors

DEFAULT_ADDRESS = "http://127.0.0.1:8265"
INSECURE_HELP = (
    "allow plain http to a non-loopback address (the cluster token then crosses the network in clear)"
)
RUNTIME_ENV_FILE = Path("cluster") / "runtime_env.yaml"
CONSTRAINTS_FILE = Path("cluster") / "constraints.txt"
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}
STORAGE_SCHEMES = {"s3", "gs", "gcs", "abfs", "abfss", "az", "hdfs"}
META_PREFIX = "uniproto_"


class SubmitError(RuntimeError):
    """Submission refused or failed; the message says why and what to do."""


# ------------------------------------------------------------------------------------------------ plan


@dataclass
class JobPlan:
    """Everything a submission sends, computed without contacting the cluster (printed by --dry-run)."""

    stage: str
    submission_id: str
    entrypoint: str
    runtime_env: dict[str, Any]
    metadata: dict[str, str]
    config_hash: str
    local_cluster: bool
    overrides: list[str] = field(default_factory=list)  # all --set items the job receives, in order

    def to_dict(self) -> dict[str, Any]:
        return {
            "submission_id": self.submission_id,
            "stage": self.stage,
            "entrypoint": self.entrypoint,
            "runtime_env": self.runtime_env,
            "metadata": self.metadata,
            "config_hash": self.config_hash,
            "local_cluster": self.local_cluster,
        }


def config_hash(stage: str, cfg: Config) -> str:
    """sha256 of the stage and the resolved config (overrides and path rewrites included), canonical JSON."""
    blob = json.dumps({"stage": stage, "config": cfg.to_dict()}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def submission_id(stage: str, run_name: str, digest: str) -> str:
    return f"uniproto-{stage}-{run_name}-{digest[:10]}"


def git_info(workdir: Path) -> dict[str, str]:
    """Commit of the working dir and whether tracked files differ from it ("unknown" outside a git checkout)."""

    def git(*args: str) -> str | None:
        try:
            r = subprocess.run(
                ["git", "-C", str(workdir), *args], capture_output=True, text=True, timeout=20, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
        return r.stdout.strip() if r.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if not commit:
        return {"git_commit": "unknown", "git_dirty": "unknown"}
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"git_commit": commit, "git_dirty": "unknown" if status is None else str(bool(status)).lower()}


def load_runtime_env_file(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise SubmitError(f"runtime_env file not found: {path}")
    try:
        env = read_yaml(path) or {}
    except ConfigError as e:
        raise SubmitError(str(e)) from None
    if not isinstance(env, dict):
        raise SubmitError(f"{path}: top level must be a mapping (a Ray runtime_env)")
    for name, value in (env.get("env_vars") or {}).items():
        if SECRET_NAME_RE.search(str(name)):
            raise SubmitError(
                f"{path}: env_vars.{name}: looks like a credential; secrets never travel in a job's runtime_env "
                "(use the node's identity: instance profile, service account, workload identity)"
            )
        if not isinstance(value, str):
            raise SubmitError(f"{path}: env_vars.{name}: must be a string, got {value!r}")
    return env


def build_runtime_env(
    template: dict[str, Any], workdir: Path, cfg: Config, *, with_pip: bool
) -> dict[str, Any]:
    env: dict[str, Any] = {
        "working_dir": str(workdir),
        "excludes": list(template.get("excludes") or []),
        "env_vars": dict(template.get("env_vars") or {}),
    }
    env["env_vars"]["RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S"] = str(cfg.ray.no_progress_timeout_s)
    if with_pip and template.get("pip"):
        env["pip"] = template["pip"]
    return env


# ------------------------------------------------------------------------------------------------ paths


def _is_url(value: str) -> bool:
    return "://" in value


def _inside(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def uploaded(path: Path, workdir: Path, excludes: list[str]) -> bool:
    """Would Ray upload `path` with `workdir`? Same rules as Ray's packaging: .gitignore (unless
    RAY_RUNTIME_ENV_IGNORE_GITIGNORE=1) and .rayignore in every directory on the way, plus runtime_env excludes."""
    from ray._private.runtime_env.packaging import _get_excludes, get_excludes_from_ignore_files

    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    quiet = logging.getLogger("uniproto.submit.packaging")
    quiet.setLevel(logging.ERROR)  # Ray logs every ignore file it reads at INFO
    path, workdir = path.absolute(), workdir.absolute()
    if not _inside(path, workdir):
        return False
    checks = [_get_excludes(workdir, excludes)]
    node = workdir
    for part in path.relative_to(workdir).parts:
        checks += get_excludes_from_ignore_files(node, include_gitignore=include_gitignore, logger=quiet)
        node = node / part
        if any(check(node) for check in checks):
            return False
    return True


def _local_path(key: str, value: str, cwd: Path, must_exist: bool) -> str:
    p = Path(value).expanduser()
    p = (p if p.is_absolute() else cwd / p).resolve()
    if must_exist and not p.exists():
        raise ConfigError(f"{key}: {value!r} does not exist (resolved to {p})")
    return str(p)


def _remote_path(key: str, value: str, why: str) -> str:
    if not Path(value).is_absolute():
        raise ConfigError(
            f"{key}: {value!r} is relative; on a cluster it would resolve inside the job's temporary copy of the "
            f"working directory on the head node. Use an absolute path {why}"
        )
    return value


def _place(key: str, value: str, local: bool, cwd: Path, must_exist: bool, where: str) -> str:
    """Absolute for a local cluster (resolved here), refused unless absolute for a remote one."""
    return _local_path(key, value, cwd, must_exist) if local else _remote_path(key, value, where)


def _check_storage_url(key: str, value: str) -> None:
    parts = urlsplit(value)
    if parts.scheme not in STORAGE_SCHEMES:
        raise ConfigError(
            f"{key}: unsupported URL scheme {parts.scheme!r} (use one of {sorted(STORAGE_SCHEMES)})"
        )
    if "@" in parts.netloc or parts.query:
        raise ConfigError(
            f"{key}: credentials or query parameters in a storage URL are refused; the nodes' identity "
            "(instance profile, service account, workload identity) grants bucket access"
        )


def cluster_path_overrides(
    cfg: Config,
    *,
    local: bool,
    workdir: Path,
    cwd: Path,
    excludes: list[str],
    check_data: bool = True,
) -> dict[str, str]:
    """The path settings the job must receive so that they mean on the cluster what they mean here.

    local: the cluster runs on this machine, so relative paths become absolute ones (the job's cwd is a copy of
    the working dir, not this directory). Remote: relative paths are refused (they would land in that temporary
    copy), storage must be set, and what can be checked from here is. Raises ConfigError naming the key.
    """
    out: dict[str, str] = {}  # run.name's rule is the config's own (system.config.RUN_NAME_RE)

    root = cfg.data.root
    if _is_url(root):
        raise ConfigError(
            f"data.root: the dataset reader takes a filesystem path (on clusters a mount every node shares), "
            f"not a URL: {root!r}"
        )
    out["data.root"] = _place(
        "data.root", root, local, cwd, True, "on storage every node mounts (e.g. /mnt/data/...)"
    )
    if not local and check_data and not Path(root).exists():
        raise ConfigError(
            f"data.root: {root!r} is not visible on this machine, so its manifest and shards cannot be checked "
            "before submission; mount it here, or pass --no-local-data-check (the job then checks it on the "
            "head node before Ray starts)"
        )

    out_dir = cfg.run.output_dir
    if _is_url(out_dir):
        raise ConfigError(
            f"run.output_dir: must be a filesystem path (reports are written with plain file IO): {out_dir!r}"
        )
    out["run.output_dir"] = _place(
        "run.output_dir", out_dir, local, cwd, False, "on a shared filesystem (e.g. /mnt/shared/runs)"
    )

    storage = cfg.ray.storage_path
    if storage is None:
        if not local:
            raise ConfigError(
                "ray.storage_path: a cluster needs checkpoint storage that every node reaches (s3://..., gs://... "
                "or a shared filesystem path); the default <run dir>/ray is on one node's local disk"
            )
    elif _is_url(storage):
        _check_storage_url("ray.storage_path", storage)
    else:
        out["ray.storage_path"] = _place(
            "ray.storage_path", storage, local, cwd, False, "on a shared filesystem, or an s3:// / gs:// URL"
        )

    space = cfg.sweep.space
    if space:
        p = Path(space).expanduser()
        p = (p if p.is_absolute() else cwd / p).resolve()
        if not p.is_file():
            raise ConfigError(f"sweep.space: search space file not found: {space}")
        if _inside(p, workdir.resolve()) and uploaded(p, workdir, excludes):
            out["sweep.space"] = str(p.relative_to(workdir.resolve()))
        elif local:
            out["sweep.space"] = str(p)
        else:
            raise ConfigError(
                f"sweep.space: {space!r} is not uploaded with the working directory {workdir} (outside it, or "
                "excluded); put it under tune_spaces/"
            )

    pretrained = cfg.model.pretrained
    if pretrained and (os.sep in pretrained or "/" in pretrained or Path(pretrained).expanduser().exists()):
        if _is_url(pretrained):
            raise ConfigError(
                f"model.pretrained: a local checkpoint file or an open_clip tag, not a URL: {pretrained!r}"
            )
        out["model.pretrained"] = _place(
            "model.pretrained", pretrained, local, cwd, True, "on storage every node mounts"
        )
    return out


def check_dataset(cfg: Config) -> None:
    """The checks prepare_run makes before Ray starts: manifest, shards, and the splits the config names."""
    from system.data.dataset_dir import load_manifest

    manifest = load_manifest(cfg.data.root)
    for split in ("train", cfg.eval.select_split, cfg.eval.report_split):
        manifest.shard_paths(cfg.data.root, split)


# ------------------------------------------------------------------------------------------------ secrets


def secret_env_values(environ: dict[str, str] | None = None) -> dict[str, str]:
    """{name: value} of environment variables that hold secrets (by name), values long enough to search for."""
    env = os.environ if environ is None else environ
    return {k: v for k, v in env.items() if SECRET_NAME_RE.search(k) and len(v) >= 8}


def _forms(value: str) -> set[str]:
    """The ways a value can appear in text we upload: raw, JSON-escaped (backslashes, quotes, \\uXXXX), and
    YAML/shell-quoted forms reduce to these two."""
    return {value, json.dumps(value)[1:-1], json.dumps(value, ensure_ascii=False)[1:-1]}


def _secret_in(text: str, secrets: dict[str, str]) -> str | None:
    for name, value in secrets.items():
        if any(form in text for form in _forms(value)):
            return name
    return None


def assert_no_secrets(plan: JobPlan, environ: dict[str, str] | None = None) -> None:
    """Refuse a plan whose entrypoint, runtime_env or metadata contains a secret's value or URL credentials."""
    blob = json.dumps(plan.to_dict(), sort_keys=True)
    raw = "\n".join([plan.entrypoint, *plan.overrides, json.dumps(plan.to_dict(), ensure_ascii=False)])
    name = _secret_in(blob + "\n" + raw, secret_env_values(environ))
    if name is not None:
        raise SubmitError(
            f"the job would carry the value of ${name} (in its entrypoint, runtime_env or metadata); "
            "refusing to submit. Secrets reach jobs through the nodes' identity, never through a config."
        )
    if re.search(r"://[^/\s@\"]+:[^/\s@\"]+@", raw):
        raise SubmitError(
            "the job would carry credentials inside a URL (scheme://user:password@...); refusing"
        )


# A file whose first bytes carry one of these is a key or a credential, whatever its name.
_KEY_MARKERS = (
    re.compile(rb"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----"),
    re.compile(rb'"private_key"\s*:\s*"-----BEGIN'),  # a cloud service-account key file
)
_SCAN_BYTES = 8 * 2**20  # larger files are data, not configs; Ray refuses very large uploads anyway


def uploaded_files(workdir: Path, excludes: list[str]) -> list[Path]:
    """Every file Ray would upload with `workdir` (its own walk: .gitignore, .rayignore and `excludes`)."""
    from ray._private.runtime_env.packaging import _dir_travel, _get_excludes

    include_gitignore = os.environ.get("RAY_RUNTIME_ENV_IGNORE_GITIGNORE", "0") != "1"
    quiet = logging.getLogger("uniproto.submit.packaging")
    quiet.setLevel(logging.ERROR)
    out: list[Path] = []
    _dir_travel(
        workdir.absolute(),
        [_get_excludes(workdir.absolute(), excludes)],
        lambda p: out.append(p) if p.is_file() and not p.is_symlink() else None,
        include_gitignore=include_gitignore,
        logger=quiet,
    )
    return out


def assert_upload_clean(workdir: Path, excludes: list[str], environ: dict[str, str] | None = None) -> int:
    """Refuse to upload a working directory holding a private key, a credential file or a secret's value in any
    file (the config body included); returns the number of files scanned."""
    secrets = secret_env_values(environ)
    files = uploaded_files(workdir, excludes)
    for path in files:
        rel = path.relative_to(workdir.absolute())
        with open(path, "rb") as f:
            data = f.read(_SCAN_BYTES)
        if any(m.search(data) for m in _KEY_MARKERS):
            raise SubmitError(
                f"{rel}: looks like a private key or credential file and would be uploaded with the job; move "
                "it out of the working directory or exclude it (.rayignore)"
            )
        name = _secret_in(data.decode("utf-8", "replace"), secrets) if secrets else None
        if name is not None:
            raise SubmitError(f"{rel}: contains the value of ${name}; refusing to upload it with the job")
    return len(files)


# ------------------------------------------------------------------------------------------------ cluster


def resolve_address(arg: str | None) -> str:
    address = (
        arg or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    )
    if address == "auto":
        address = DEFAULT_ADDRESS
    if address.startswith("ray://"):
        raise SubmitError(
            f"{address}: a Ray Client address; jobs are submitted to the dashboard's job API (http://<head>:8265)"
        )
    if "://" not in address:
        address = f"http://{address}"
    if urlsplit(address).scheme not in {"http", "https"}:
        raise SubmitError(f"{address}: the job API address is http(s)://<host>:<dashboard port>")
    return address.rstrip("/")


def is_loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's clients let RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit address; hide them briefly."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def enable_token_auth() -> str:
    """Use the cluster token the way `ray.init` does for a local cluster: when RAY_AUTH_MODE is unset and Ray's
    token lookup finds one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), switch this process to token
    mode so that JobSubmissionClient sends it. Returns where the token comes from (never the token)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return f"RAY_AUTH_MODE={mode}"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and not (Path(path).is_file() and Path(path).stat().st_size > 0):
        raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: missing or empty token file")
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif path:
        source = "RAY_AUTH_TOKEN_PATH"
    elif (Path.home() / ".ray" / "auth_token").is_file():
        source = "~/.ray/auth_token"
    else:
        return "none (cluster without token authentication)"
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config as RayletConfig

    RayletConfig.initialize("")  # Ray caches its config; refresh it so this process observes token mode
    return source


def check_transport(address: str, insecure_http: bool = False) -> None:
    """Plain http beyond loopback would send the cluster token in clear: refused unless asked for by name."""
    if is_loopback(address) or urlsplit(address).scheme != "http":
        return
    if not insecure_http:
        raise SubmitError(
            f"{address} is plain http beyond loopback: the cluster token would cross the network in clear. Reach "
            "the head through a tunnel (`ray dashboard cluster/aws.yaml`, `kubectl port-forward`) and use "
            "http://127.0.0.1:8265, or https; --insecure-http sends it anyway"
        )
    print(f"[uniproto] warning: {address}: plain http beyond loopback (--insecure-http)", file=sys.stderr)


def connect(address: str, insecure_http: bool = False):
    """A JobSubmissionClient for `address`, with Ray's token when there is one; errors say what to check."""
    from ray.job_submission import JobSubmissionClient

    check_transport(address, insecure_http)
    source = enable_token_auth()
    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection, auth and version errors all mean "cannot submit"
        raise SubmitError(f"cannot use the Ray job API at {address} (token: {source}): {e}") from None


def cluster_ray_version(client) -> str | None:
    """The cluster's Ray version from the job API's /api/version (through the SDK's own request helper, which
    carries the token and TLS settings); None when it cannot tell."""
    try:
        r = client._do_request("GET", "/api/version")
        return r.json().get("ray_version") if r.status_code == 200 else None
    except Exception:  # noqa: BLE001 - an old or unusual server: skip the check rather than fail the submission
        return None


def pinned_version(workdir: Path, package: str) -> str | None:
    path = workdir / CONSTRAINTS_FILE
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() == package.lower() and version:
            return version
    return None


def _local_ips() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs} | {
        "127.0.0.1",
        "::1",
    }


def cluster_is_local(address: str, attempts: int = 3) -> bool:
    """True when every node of the cluster runs on this machine (a loopback address is not enough: an SSH
    tunnel to a remote head is loopback too). Asks the State API for the node IPs; SubmitError when it cannot."""
    if not is_loopback(address):
        return False
    from ray.util.state import list_nodes

    error: Exception | None = None
    for attempt in range(attempts):
        try:
            with _explicit_address():
                nodes = list_nodes(address=address, raise_on_missing_output=False, timeout=30)
            ips = {n.node_ip for n in nodes if n.state == "ALIVE"}
            if ips:
                return ips <= _local_ips()
        except Exception as e:  # noqa: BLE001 - retried, then reported
            error = e
        time.sleep(2 * (attempt + 1))
    raise SubmitError(
        f"could not tell whether the cluster at {address} runs on this machine (State API: {error or 'no nodes'}); "
        "pass --cluster local or --cluster remote"
    )


# ------------------------------------------------------------------------------------------------ submit


@dataclass
class _Checked:
    cfg_file: Path
    rel_config: str
    cfg: Config
    template: dict[str, Any]
    excludes: list[str]


def precheck(
    stage: str,
    config_path: str,
    sets: list[str],
    *,
    stages: Mapping[str, str],
    workdir: Path,
    cwd: Path,
    runtime_env_file: Path | None = None,
) -> _Checked:
    """What holds wherever the cluster is: the stage is one of `stages`, the config and overrides validate, the
    config file travels with the working dir, the runtime_env template carries no credential. Runs before any
    connection."""
    if stage not in stages:
        raise SubmitError(f"unknown stage {stage!r} (stages: {', '.join(stages)})")
    cfg_file = Path(config_path).expanduser()
    cfg_file = (cfg_file if cfg_file.is_absolute() else cwd / cfg_file).resolve()
    cfg = load_config(cfg_file, sets)  # types, ranges, cross-field rules; the error names the key
    template = load_runtime_env_file(runtime_env_file or workdir / RUNTIME_ENV_FILE)
    excludes = list(template.get("excludes") or [])
    if not uploaded(cfg_file, workdir, excludes):
        raise SubmitError(
            f"--config {config_path}: not uploaded with the working directory {workdir} (outside it, or excluded "
            "by .rayignore/.gitignore/excludes, as runs/ is); copy it under pipelines/configs/"
        )
    return _Checked(cfg_file, str(cfg_file.relative_to(workdir)), cfg, template, excludes)


def plan_job(
    stage: str,
    config_path: str,
    sets: list[str],
    *,
    stages: Mapping[str, str],
    workdir: Path,
    local: bool,
    with_pip: bool | None = None,
    check_data: bool = True,
    runtime_env_file: Path | None = None,
    cwd: Path | None = None,
) -> tuple[JobPlan, Config]:
    """Validate everything and build the job; contacts no cluster. `stages`: stage name -> the module the job
    runs with `python -m`. Raises ConfigError / DatasetError / SubmitError."""
    cwd = (cwd or Path.cwd()).resolve()
    workdir = workdir.resolve()
    c = precheck(
        stage, config_path, sets, stages=stages, workdir=workdir, cwd=cwd, runtime_env_file=runtime_env_file
    )
    cfg_file, rel_config, cfg, template, excludes = c.cfg_file, c.rel_config, c.cfg, c.template, c.excludes
    try:
        paths = cluster_path_overrides(
            cfg, local=local, workdir=workdir, cwd=cwd, excludes=excludes, check_data=check_data
        )
    except ConfigError as e:
        raise ConfigError(f"{config_path}: {e}") from None
    current = cfg.to_dict()
    overrides = list(sets) + [
        f"{k}={v}" for k, v in paths.items() if current[k.split(".")[0]][k.split(".")[1]] != v
    ]
    cfg = load_config(cfg_file, overrides)  # the job's exact config, validated once more
    if Path(cfg.data.root).exists():
        check_dataset(cfg)
    if cfg.sweep.space:
        from system.spaces import load_space

        space = Path(cfg.sweep.space)
        load_space(space if space.is_absolute() else workdir / space, cfg)

    digest = config_hash(stage, cfg)
    sid = submission_id(stage, cfg.run.name, digest)
    argv = ["python", "-m", stages[stage], "--config", rel_config]
    for item in overrides:
        argv += ["--set", item]
    metadata = {
        f"{META_PREFIX}stage": stage,
        f"{META_PREFIX}run_name": cfg.run.name,
        f"{META_PREFIX}config": rel_config,
        f"{META_PREFIX}config_hash": digest,
        **{f"{META_PREFIX}{k}": v for k, v in git_info(workdir).items()},
    }
    runtime_env = build_runtime_env(
        template, workdir, cfg, with_pip=(not local) if with_pip is None else with_pip
    )
    plan = JobPlan(stage, sid, shlex.join(argv), runtime_env, metadata, digest, local, overrides)
    assert_no_secrets(plan)
    assert_upload_clean(workdir, excludes)  # every file that travels, the config body included
    return plan, cfg


def _free_submission_id(client, sid: str, resubmit: bool) -> str:
    """`sid` when unused; with --resubmit after a finished job, the next free `<sid>-rN`."""
    candidate, n = sid, 1
    while True:
        try:
            info = client.get_job_info(candidate)
        except RuntimeError:  # "job does not exist"
            return candidate
        status = str(getattr(info.status, "value", info.status))
        if status not in TERMINAL:
            raise SubmitError(
                f"job {candidate} with this exact config is {status} on the cluster; follow it with "
                f"`uniproto submit logs {candidate} --follow` or stop it with `uniproto submit stop {candidate}`"
            )
        if not resubmit:
            raise SubmitError(
                f"job {candidate} with this exact config already ran ({status}); pass --resubmit to run it again "
                "(same run name and storage: Ray Train resumes from its last checkpoint)"
            )
        n += 1
        candidate = f"{sid}-r{n}"


def follow_logs(client, sid: str, out=sys.stdout) -> str:
    """Stream the job's log until it ends; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # connection closed early: fall back to polling
        print(f"[uniproto] log stream ended early ({e}); polling the job status", file=sys.stderr)
    return wait_terminal(client, sid)


def wait_terminal(client, sid: str, poll_s: float = 2.0, timeout_s: float | None = None) -> str:
    t0 = time.monotonic()
    while True:
        status = client.get_job_status(sid)
        status = str(getattr(status, "value", status))
        if status in TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            return status
        time.sleep(poll_s)


def job_record(info) -> dict[str, Any]:
    keys = (
        "submission_id",
        "status",
        "message",
        "entrypoint",
        "metadata",
        "runtime_env",
        "start_time",
        "end_time",
    )
    rec = {k: getattr(info, k, None) for k in keys}
    rec["status"] = str(getattr(rec["status"], "value", rec["status"]))
    rec["driver_exit_code"] = getattr(info, "driver_exit_code", None)
    return rec


# ------------------------------------------------------------------------------------------------ CLI


def _submit_parser(stages: Mapping[str, str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="uniproto submit",
        description="Submit a pipeline stage as a Ray job (status/logs/stop/list ID: see `uniproto submit status -h`).",
    )
    p.add_argument("stage", help=f"the pipeline stage to run: {', '.join(stages)}")
    p.add_argument("--config", required=True, help="YAML config inside the working directory")
    p.add_argument(
        "--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)"
    )
    p.add_argument(
        "--address", help=f"job API URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, {DEFAULT_ADDRESS})"
    )
    p.add_argument("--insecure-http", action="store_true", help=INSECURE_HELP)
    p.add_argument(
        "--working-dir", default=".", help="uploaded as the job's working directory (the repo root)"
    )
    p.add_argument("--runtime-env", help=f"runtime_env template (default: <working dir>/{RUNTIME_ENV_FILE})")
    p.add_argument(
        "--follow", action="store_true", help="stream the job's log until it ends; exit 0 iff SUCCEEDED"
    )
    p.add_argument(
        "--dry-run", action="store_true", help="validate and print the job as JSON; contact no cluster"
    )
    p.add_argument(
        "--resubmit", action="store_true", help="run a config whose job already ended again (new id)"
    )
    p.add_argument(
        "--pip",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="install the pinned stack through runtime_env pip (default: on for remote clusters, off for local)",
    )
    p.add_argument(
        "--cluster",
        choices=["auto", "local", "remote"],
        default="auto",
        help="where the cluster runs: auto asks it for its node IPs (local: relative paths made absolute)",
    )
    p.add_argument(
        "--no-local-data-check",
        dest="check_data",
        action="store_false",
        help="remote cluster: data.root is not mounted here; the job checks the manifest on the head instead",
    )
    p.add_argument(
        "--allow-version-mismatch",
        action="store_true",
        help="submit even when the cluster's Ray differs from the version pinned in cluster/constraints.txt",
    )
    p.add_argument(
        "--entrypoint-num-cpus", type=float, default=None, help="CPUs reserved for the driver (default 0)"
    )
    return p


def _job_parser(action: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"uniproto submit {action}")
    if action != "list":
        p.add_argument("submission_id")
    p.add_argument(
        "--address", help=f"job API URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, {DEFAULT_ADDRESS})"
    )
    p.add_argument("--insecure-http", action="store_true", help=INSECURE_HELP)
    if action == "logs":
        p.add_argument("--follow", action="store_true")
    if action == "stop":
        p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
    return p


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str), flush=True)


def _job_command(action: str, argv: list[str]) -> int:
    a = _job_parser(action).parse_args(argv)
    address = resolve_address(a.address)
    client = connect(address, a.insecure_http)
    if action == "list":
        jobs = [j for j in client.list_jobs() if any(k.startswith(META_PREFIX) for k in (j.metadata or {}))]
        _print_json([job_record(j) for j in jobs])
        return 0
    try:
        info = client.get_job_info(a.submission_id)
    except RuntimeError as e:
        raise SubmitError(f"no job {a.submission_id} at {address}: {e}") from None
    if action == "status":
        _print_json(job_record(info))
        return 0
    if action == "logs":
        if a.follow:
            status = follow_logs(client, a.submission_id)
            print(f"[uniproto] job {a.submission_id}: {status}", file=sys.stderr)
            return 0 if status == "SUCCEEDED" else 1
        sys.stdout.write(client.get_job_logs(a.submission_id))
        return 0
    stopped = client.stop_job(a.submission_id)
    status = wait_terminal(client, a.submission_id, timeout_s=120) if a.wait else job_record(info)["status"]
    _print_json({"submission_id": a.submission_id, "stop_requested": stopped, "status": status})
    return 0


def _submit(argv: list[str], stages: Mapping[str, str]) -> int:
    a = _submit_parser(stages).parse_args(argv)
    workdir = Path(a.working_dir).resolve()
    address = resolve_address(a.address)
    runtime_env_file = Path(a.runtime_env).resolve() if a.runtime_env else None
    if a.dry_run:
        # No cluster contact: with --cluster auto a loopback address is taken for this machine.
        local = is_loopback(address) if a.cluster == "auto" else a.cluster == "local"
        plan, _ = plan_job(
            a.stage, a.config, a.set, stages=stages, workdir=workdir, local=local, with_pip=a.pip,
            check_data=a.check_data, runtime_env_file=runtime_env_file,
        )  # fmt: skip
        _print_json({"address": address, **plan.to_dict()})
        return 0

    # Everything that does not depend on where the cluster runs is refused before any connection.
    precheck(
        a.stage, a.config, a.set, stages=stages, workdir=workdir, cwd=Path.cwd().resolve(),
        runtime_env_file=runtime_env_file,
    )  # fmt: skip
    client = connect(address, a.insecure_http)
    version, pinned = cluster_ray_version(client), pinned_version(workdir, "ray")
    if pinned and version and version != pinned and not a.allow_version_mismatch:
        raise SubmitError(
            f"the cluster runs Ray {version}, {CONSTRAINTS_FILE} pins {pinned}; use an image/venv with ray=={pinned} "
            "(or --allow-version-mismatch)"
        )
    local = cluster_is_local(address) if a.cluster == "auto" else a.cluster == "local"
    plan, cfg = plan_job(
        a.stage, a.config, a.set, stages=stages, workdir=workdir, local=local, with_pip=a.pip,
        check_data=a.check_data, runtime_env_file=runtime_env_file,
    )  # fmt: skip
    sid = _free_submission_id(client, plan.submission_id, a.resubmit)
    client.submit_job(
        entrypoint=plan.entrypoint,
        submission_id=sid,
        runtime_env=plan.runtime_env,
        metadata=plan.metadata,
        entrypoint_num_cpus=a.entrypoint_num_cpus,
    )
    where = "this machine" if local else "a remote cluster"
    print(
        f"[uniproto] submitted {sid} to {address} ({where}); run {cfg.run.name}, config {plan.config_hash[:10]}"
    )
    _print_json(
        {"submission_id": sid, "address": address, "entrypoint": plan.entrypoint, "metadata": plan.metadata}
    )
    if not a.follow:
        print(
            f"[uniproto] follow: uniproto submit logs {sid} --follow | status: uniproto submit status {sid} | "
            f"stop: uniproto submit stop {sid}   (add --address {address} unless it is your default)"
        )
        return 0
    status = follow_logs(client, sid)
    print(f"[uniproto] job {sid}: {status}", flush=True)
    return 0 if status == "SUCCEEDED" else 1


def main(argv: list[str] | None = None, *, stages: Mapping[str, str]) -> int:
    """`uniproto submit ...`; `stages`: the stages a submission may name, each with the module that runs it."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in {"status", "logs", "stop", "list"}:
            return exit_2_on_user_errors(_job_command, argv[0], argv[1:])
        return exit_2_on_user_errors(_submit, argv, stages)
    except SubmitError as e:
        print(f"uniproto: submit: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "\n[uniproto] interrupted; the job keeps running (uniproto submit stop ID ends it)",
            file=sys.stderr,
        )
        return 130
