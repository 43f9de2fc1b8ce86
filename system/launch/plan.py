"""The job plan for `uniproto submit`, built on the submitting machine before any connection: everything that can
be checked there is checked here (the config's types, ranges and cross-field rules, the paths in it against what
the cluster can see, the run name, and that nothing in the job's entrypoint, runtime_env, metadata or uploaded
files carries a secret). A refusal names the key; a bad config never reaches the cluster.

The job runs `python -m <the stage's module> --config <path in the working dir> --set ...` with the runtime_env of
cluster/runtime_env.yaml (working dir uploaded minus .rayignore/.gitignore/excludes). Its submission id is
`uniproto-<stage>-<run name>-<10 hex of the config hash>`: the same resolved config gets the same id, so a second
submission while the first runs is refused instead of training twice. Metadata: stage, run name, config hash, git
commit and whether the tree was dirty; never environment variables.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shlex
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from system.config import SECRET_NAME_RE, Config, ConfigError, load_config, read_yaml

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
        from system.experiments.spaces import load_space

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
