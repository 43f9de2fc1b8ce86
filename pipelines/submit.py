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
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from system.launch.client import (
    cluster_is_local,
    cluster_ray_version,
    connect,
    follow_logs,
    free_submission_id,
    is_loopback,
    job_record,
    pinned_version,
    resolve_address,
    wait_terminal,
)
from system.launch.plan import (
    CONSTRAINTS_FILE,
    DEFAULT_ADDRESS,
    INSECURE_HELP,
    META_PREFIX,
    RUNTIME_ENV_FILE,
    SubmitError,
    plan_job,
    precheck,
)
from system.user_errors import exit_2_on_user_errors


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
    sid = free_submission_id(client, plan.submission_id, a.resubmit)
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
