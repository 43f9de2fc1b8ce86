"""Job submission against a real two-node Ray cluster on this machine: `ray start --head` with 0 CPUs, as the
launcher configs start heads (its own temp dir, HOME and ports, token authentication switched on the way Ray's
docs say for `ray start`: a token generated first with `ray get-auth-token --generate`), and a worker node
joined with `ray start --address` that holds every CPU, then

- the job API refuses a client without the token, and the dashboard answers on loopback only;
- plain `ray job submit --working-dir .` runs our code from the uploaded working dir (a bad config fails inside
  the job before Ray starts, naming the key), and `uniproto submit stop` stops a running job;
- `uniproto submit run --follow` runs the whole pipeline on the tiny dataset as a job (stage 1 and stage 2 of a
  2-trial sweep, all of it on the worker node: the head has no CPU) and ends SUCCEEDED, with the
  report under run.output_dir (selection on val, every trial's planned steps and its val probe reduced over both
  workers, the diagnostics and plots, a best.yaml that loads as a one-trial config) and Train checkpoints under
  ray.storage_path; its id, config hash and git commit are
  those computed here; no secret from the environment and not the cluster token appear in anything it printed or
  the job carries; the uploaded package holds the code and none of runs/, .venv/, .git/ or shard files;
- the same config again is refused while its job exists (a second training run needs --resubmit).

Each node is stopped by signalling the `ray start --block` process this test started (Ray drains and stops its
own children), then anything left in that process session; never `ray stop`, which ends every Ray on the machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Made at import: a value written in this file would be found by the upload scan (this file travels too).
FAKE_SECRET = f"uniproto-test-fake-secret-{uuid.uuid4().hex[:10]}"


def _free_ports(n: int) -> list[int]:
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


@dataclass
class Head:
    address: str
    env: dict[str, str]  # the environment of clients that hold the token (HOME with ~/.ray/auth_token)
    base: Path
    token: str
    temp_dir: Path
    dashboard_port: int


def _http_status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def _stop_session(proc: subprocess.Popen) -> None:
    """SIGTERM the `ray start --block` we started (Ray drains and ends its children), then SIGKILL whatever is
    still in its process session: only processes this test started."""
    import psutil

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    for p in psutil.process_iter(["pid"]):
        try:
            if p.pid != os.getpid() and os.getsid(p.pid) == proc.pid:
                p.kill()
        except (ProcessLookupError, PermissionError, psutil.Error):
            pass
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def ray_head():
    base = Path(tempfile.mkdtemp(prefix="up-", dir="/tmp"))  # unix socket paths must stay short
    home = base / "home"
    home.mkdir()
    gcs, dash, client, agent, worker_agent = _free_ports(5)
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("RAY_AUTH", "RAY_ADDRESS", "RAY_API_SERVER"))
    }
    env.update(
        HOME=str(home),
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",  # the job's `python` is this venv's
        # DeepSpeed's JIT build and matplotlib's font cache stay in the real caches; the new HOME holds the Ray token.
        TORCH_EXTENSIONS_DIR=os.environ.get("TORCH_EXTENSIONS_DIR")
        or str(Path.home() / ".cache" / "torch_extensions"),
        MPLCONFIGDIR=os.environ.get("MPLCONFIGDIR")
        or str(Path.home() / ".cache" / "matplotlib"),  # font cache
        RAY_USAGE_STATS_ENABLED="0",
        RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",  # SIGTERM stops the head at once (no 30 s drain)
        RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S="120",
    )
    subprocess.run(
        [str(BIN / "ray"), "get-auth-token", "--generate"], env=env, check=True, capture_output=True
    )
    token = (home / ".ray" / "auth_token").read_text().strip()
    log = open(base / "head.log", "w")  # noqa: SIM115 - closed in finally
    cmd = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent}",
        "--num-cpus=0",  # as the launcher configs: nothing but the cluster's own services on the head
        f"--temp-dir={base / 't'}",
        "--include-dashboard=true",
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dash}"
    worker, worker_log = None, open(base / "worker.log", "w")  # noqa: SIM115 - closed in finally
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if _http_status(f"{address}/api/version") in (200, 401):
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"ray start --head did not come up:\n{(base / 'head.log').read_text()[-3000:]}")
            time.sleep(1)
        # The worker node: every CPU of the cluster, on its own ports.
        worker = subprocess.Popen(
            [
                str(BIN / "ray"), "start", "--block", f"--address=127.0.0.1:{gcs}", "--num-cpus=4",
                f"--dashboard-agent-listen-port={worker_agent}", "--disable-usage-stats",
                # its own temp dir, as a separate machine has: sharing the head's, its runtime-env agent would
                # delete the job's unpacked working dir (the driver's cwd) when its trials release it
                f"--temp-dir={base / 'w'}",
            ],
            env=dict(env, RAY_AUTH_MODE="token"), stdout=worker_log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        while _cluster_cpus(gcs, env) < 4:
            if worker.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the worker node did not join:\n{(base / 'worker.log').read_text()[-3000:]}")
            time.sleep(1)
        yield Head(address, env, base, token, base / "t", dash)
    finally:
        if worker is not None:
            _stop_session(worker)
        worker_log.close()
        _stop_session(proc)
        log.close()
        shutil.rmtree(base, ignore_errors=True)


def _cluster_cpus(gcs: int, env: dict[str, str]) -> float:
    """Total CPUs the cluster's nodes registered (0 until the worker node has joined)."""
    r = subprocess.run(
        [sys.executable, "-c", f"import ray; ray.init('127.0.0.1:{gcs}'); print(ray.cluster_resources())"],
        env=dict(env, RAY_AUTH_MODE="token"), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    m = re.search(r"'CPU': ([0-9.]+)", r.stdout)
    return float(m.group(1)) if m else 0.0


def _uniproto(head: Head, *args: str, env: dict[str, str] | None = None, timeout: int = 60):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipelines.cli",
            "submit",
            *args,
        ],  # `uniproto submit ...`
        cwd=REPO,
        env=env or head.env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _ray_job(head: Head, *args: str, timeout: int = 120):
    env = dict(head.env, RAY_AUTH_MODE="token")  # Ray 2.60's CLI sends the token only in token mode
    return subprocess.run(
        [str(BIN / "ray"), "job", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def _job_sets(tiny_dataset, out: Path) -> list[str]:
    sets = {
        "data.root": tiny_dataset,
        "run.output_dir": out / "runs",
        "run.name": "job",
        "ray.storage_path": out / "storage",
        "data.image_size": 32,
        "train.steps": 17,  # 226 train images at a global batch of 32: 7 steps an epoch, a partial third
        "train.reports": 3,  # at steps 6, 12 and 17
        "train.micro_batch_size": 16,
        "finetune.epochs": 3,
        "finetune.lambda_points": 11,
        "sweep.space": "tune_spaces/demo.yaml",  # two trials
        "ray.no_progress_timeout_s": 120,
    }
    return [f"{k}={v}" for k, v in sets.items()]


@pytest.mark.timeout(900)
def test_submit_to_a_real_ray_head(ray_head, tiny_dataset, tmp_path):
    head = ray_head
    # Token authentication is on: no token, no job API. The dashboard listens on loopback only.
    assert _http_status(f"{head.address}/api/version") == 401
    assert _http_status(f"{head.address}/api/version", {"Authorization": f"Bearer {head.token}"}) == 200
    from ray._private.services import get_node_ip_address

    node_ip = get_node_ip_address()
    if not node_ip.startswith("127."):
        with pytest.raises(OSError):
            socket.create_connection((node_ip, head.dashboard_port), timeout=3).close()
    no_token = dict(head.env, HOME=str(head.base / "nobody"))
    r = _uniproto(head, "status", "anything", "--address", head.address, env=no_token)
    assert r.returncode == 2 and "Authentication" in r.stderr, r.stderr

    # Plain `ray job submit`: our code runs from the uploaded working dir; a bad value fails inside the job,
    # named, before Ray starts there.
    r = _ray_job(
        head, "submit", "--address", head.address, "--working-dir", ".", "--",
        "python", "-m", "pipelines.pretrain", "--config", "pipelines/configs/demo.yaml",
        "--set", f"data.root={tiny_dataset}", "--set", "train.zero_stage=7",
    )  # fmt: skip
    assert r.returncode != 0 and "train.zero_stage: must be <= 3" in r.stdout + r.stderr, r.stdout + r.stderr

    # `uniproto submit stop` ends a running job.
    r = _ray_job(
        head, "submit", "--address", head.address, "--submission-id", "sleeper", "--no-wait", "--",
        "python", "-c", "import time; time.sleep(120)",
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    r = _uniproto(head, "stop", "sleeper", "--wait", "--address", head.address)
    assert r.returncode == 0 and json.loads(r.stdout)["status"] == "STOPPED", r.stdout + r.stderr

    # The whole pipeline as a job, followed to its end.
    out = tmp_path
    sets = _job_sets(tiny_dataset, out)
    argv = ["run", "--config", "pipelines/configs/demo.yaml", "--address", head.address, "--follow"]
    for s in sets:
        argv += ["--set", s]
    env = dict(head.env, AWS_SECRET_ACCESS_KEY=FAKE_SECRET, HF_TOKEN=FAKE_SECRET + "-hf")
    from pipelines.cli import STAGES
    from system.launch.plan import plan_job

    # What the submitting side must compute for this config (computed just before, same code and schema).
    plan, _ = plan_job(
        "run", "pipelines/configs/demo.yaml", sets, stages=STAGES, workdir=REPO, local=True, cwd=REPO
    )
    t0 = time.monotonic()
    r = _uniproto(head, *argv, env=env, timeout=720)
    elapsed = time.monotonic() - t0
    printed = r.stdout + r.stderr
    (tmp_path / "job.log").write_text(printed)  # the whole log, for a failure's cause
    assert r.returncode == 0, printed[-6000:]
    sid = re.search(r'"submission_id": "([^"]+)"', r.stdout).group(1)
    assert f"job {sid}: SUCCEEDED" in r.stdout, r.stdout[-3000:]
    print(f"pipeline job {sid}: {elapsed:.0f}s from submission to SUCCEEDED")

    # Id, hash and commit are the ones computed above; the cluster was recognised as this machine.
    assert "(this machine)" in r.stdout, r.stdout[-3000:]
    assert sid == plan.submission_id and re.fullmatch(r"uniproto-run-job-[0-9a-f]{10}", sid)
    status = _uniproto(head, "status", sid, "--address", head.address)
    assert status.returncode == 0, status.stderr
    info = json.loads(status.stdout)
    assert info["status"] == "SUCCEEDED" and info["driver_exit_code"] == 0
    meta = info["metadata"]
    assert meta["uniproto_config_hash"] == plan.config_hash
    assert meta["uniproto_git_commit"] == plan.metadata["uniproto_git_commit"] != "unknown"
    assert meta["uniproto_stage"] == "run" and meta["uniproto_run_name"] == "job"
    renv = info["runtime_env"]
    assert renv["working_dir"].startswith("gcs://_ray_pkg_") and "pip" not in renv  # local: this venv's stack
    assert (
        renv["env_vars"]["RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S"] == "120"
    )  # from ray.no_progress_timeout_s
    logs = _uniproto(head, "logs", sid, "--address", head.address)
    assert "top-1 on test" in logs.stdout, logs.stdout[-3000:] + logs.stderr

    # Nothing secret anywhere: what submit printed, the job record (entrypoint, metadata, runtime_env), its log.
    for text in (printed, status.stdout, logs.stdout, json.dumps(info)):
        assert FAKE_SECRET not in text
        assert head.token not in text

    # Artifacts: the report under run.output_dir, Train checkpoints (model.pt) under ray.storage_path.
    run_dir = out / "runs" / "job"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["config"]["data"]["root"] == str(tiny_dataset)
    _assert_the_pipelines_report(report, run_dir)
    storage = out / "storage"
    assert (storage / "job-sweep").is_dir()
    assert list(storage.rglob("model.pt")), sorted(str(p) for p in storage.rglob("*"))[:50]

    # What was uploaded: the code, none of the excluded trees or shard files, and small.
    pkgs = list(head.temp_dir.glob("session_*/runtime_resources/working_dir_files/_ray_pkg_*"))
    assert pkgs, "no unpacked working_dir package found on the head"
    files = [p.relative_to(pkg) for pkg in pkgs for p in pkg.rglob("*") if p.is_file()]
    names = {str(f) for f in files}
    assert {
        "system/launch/plan.py",
        "system/data/decode.py",
        "pipelines/run.py",
        "pipelines/configs/demo.yaml",
    } <= names
    assert not [f for f in files if f.parts[0] in {"runs", ".venv", ".git"} or f.suffix in {".tar", ".pt"}]
    size = sum((pkg / f).stat().st_size for pkg in pkgs for f in files if (pkg / f).is_file())
    assert size < 20 * 2**20, f"{size / 2**20:.1f} MiB uploaded"

    # The same config while its job exists is refused: training twice needs an explicit --resubmit.
    again = _uniproto(head, *[a for a in argv if a != "--follow"], env=env)
    assert again.returncode == 2 and "already ran (SUCCEEDED)" in again.stderr, again.stderr


def _assert_the_pipelines_report(report: dict, run_dir: Path) -> None:
    """What the whole pipeline (2-trial sweep, stage 2, test report) wrote, read from its run directory."""
    from system.config import load_config

    for key in ("overall", "many", "medium", "few"):
        assert 0.0 <= report[key] <= 100.0
    # 6 classes at 120..3 images: one many-shot, two medium, three few-shot classes.
    assert report["train_counts"] == [120, 57, 27, 13, 6, 3]
    assert report["config"]["train"]["steps"] == 17 and report["config"]["train"]["epochs"] is None
    assert len(report["trials"]) == 2 and all("error" not in t for t in report["trials"])
    assert {t["params"]["loss.proto_temperature"] for t in report["trials"]} == {0.05, 0.2}
    # Selection happened on val: the chosen trial is the best val trial and lambda lies on the curve's grid.
    assert report["selection"]["val_top1"] == max(t["val_top1"] for t in report["trials"])
    assert 0.0 <= report["selection"]["lambda"] <= 1.0
    for name in (
        "report.md",
        "per_class_accuracy.png",
        "lambda_curves.png",
        "config.yaml",
        "results.csv",
        "results.md",
        "sweep_efficiency.png",
        "sweep_loss_proto_temperature.png",
        "best.yaml",
        "feature_geometry.png",
        "positive_bias.png",
    ):
        assert (run_dir / name).stat().st_size > 0, name
    assert "| overall | many | medium | few |" in (run_dir / "report.md").read_text()
    assert set(report["stage_seconds"]) >= {"text filter", "prototypes", "sweep", "evaluate", "total"}
    # Stage-1 metrics made it through Train -> Tune: every trial trained for the planned steps, and the
    # per-epoch val probe (the sweep metric) was reduced over both workers: all 48 val images counted.
    trials = report["trials"]
    assert all(t["final_epoch"] == 3 and t["final_step"] == 17 for t in trials)  # report 3 of 3
    assert all(t["final_data_epoch"] == 3 for t in trials)  # in the third pass over the data
    assert all(t["final_val_probe_samples"] == 48 for t in trials)
    assert all(0.0 <= t["final_val_ncm_top1"] <= 100.0 for t in trials)
    assert all(t["status"] == "completed" and t["iterations"] == 4 for t in trials)
    eff = report["sweep"]["efficiency"]
    assert eff["trials"] == 2 and eff["stopped_early"] == 0 and eff["wall_s"] > 0
    assert len((run_dir / "results.csv").read_text().splitlines()) == 3
    # Diagnostics: centroid distances before and after stage 1, the head's bias, all in the report.
    for when in ("before", "after"):
        g = report["feature_geometry"][when]
        assert 0.0 <= g["tail_tail"] <= 2.0 and 0.0 <= g["head_tail"] <= 2.0
    assert len(report["positive_bias"]["mean_logit"]) == 6
    assert -1.0 <= report["positive_bias"]["mean_logit_vs_count_spearman"] <= 1.0
    assert "## Feature space" in (run_dir / "report.md").read_text()
    # best.yaml is the chosen trial as a one-trial config: its values, lambda fixed, no sweep.
    best = load_config(run_dir / "best.yaml")
    assert best.run.name == "job-best" and best.sweep.space is None
    assert best.loss.proto_temperature == report["selection"]["params"]["loss.proto_temperature"]
    assert best.finetune.blend_weight == pytest.approx(report["selection"]["lambda"])
