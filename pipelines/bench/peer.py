"""The peer of `uniproto benchmark train`: open_clip's own trainer (`open_clip_train`) in its own environment.

`open_clip_train` breaks on webdataset 1.0.x (docs/stack-notes.md: `KeyError: 'fname'`) and works with webdataset==0.2.86.
The peer environment is a venv built once and cached (`~/.cache/uniproto/peer-env-<hash>`): a `.pth` file puts our
venv's site-packages on its path (torch and open_clip are shared, nothing big is reinstalled), and webdataset 0.2.86
is installed into the env's own site-packages, which comes first on sys.path and so shadows our 1.0.2.

Pure stdlib: no torch or Ray import here.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

PEER_WEBDATASET = "0.2.86"
# Imported by open_clip_train (data.py / main.py) and present in our venv: checked after the build.
PEER_IMPORTS = ("webdataset", "braceexpand", "open_clip", "open_clip_train.main", "torch")
PTH_NAME = "uniproto-shared.pth"

# open_clip_train.main only knows open_clip's bundled configs: register ours, then hand it the arguments.
WRAPPER = (
    "import sys, open_clip; open_clip.add_model_config({configs!r}); "
    "from open_clip_train.main import main; r = main(sys.argv[1:]); sys.exit(0 if r in (None, 0) else 1)"
)

# One line per logged step of open_clip_train/train.py (log_every_n_steps=1), e.g.
# Train Epoch: 1 [ 256/1664 (15%)] Data (t): 0.018 Batch (t): 16.552, 7.73312/s, 7.73312/s/gpu LR: ...
_STEP_RE = re.compile(
    r"Train Epoch: (?P<epoch>\d+) \[\s*(?P<seen>\d+)/(?P<total>\d+) \(\s*\d+%\)\]\s+"
    r"Data \(t\): (?P<data>[0-9.eE+-]+)\s+Batch \(t\): (?P<batch>[0-9.eE+-]+),\s+"
    r"(?P<sps>[0-9.eE+-]+)/s,\s+(?P<sps_gpu>[0-9.eE+-]+)/s/gpu"
)


def our_site_packages() -> str:
    return sysconfig.get_paths()["purelib"]


def peer_env_dir(cache_root: str | os.PathLike | None = None) -> Path:
    """Where the peer env lives: keyed by our interpreter, our site-packages and the pinned webdataset."""
    root = Path(cache_root or os.environ.get("UNIPROTO_CACHE") or Path.home() / ".cache" / "uniproto")
    key = json.dumps([sys.executable, sys.version, our_site_packages(), PEER_WEBDATASET])
    return root / f"peer-env-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def peer_python(env: Path) -> Path:
    return env / "bin" / "python"


def env_site_packages(env: Path) -> Path:
    ver = f"python{sys.version_info.major}.{sys.version_info.minor}"
    return env / "lib" / ver / "site-packages"


def check_peer_env(python: str | os.PathLike) -> dict[str, str]:
    """Run the peer interpreter: webdataset's version and where it comes from; raises when an import fails."""
    code = (
        "import importlib, json, webdataset; "
        f"[importlib.import_module(m) for m in {list(PEER_IMPORTS)!r}]; "
        "print(json.dumps({'webdataset': webdataset.__version__, 'file': webdataset.__file__}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"peer env {python}: import check failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def ensure_peer_env(cache_root: str | os.PathLike | None = None, log=print) -> Path:
    """Build the peer env once (a few seconds) and return its python; a complete env is reused as is."""
    env = peer_env_dir(cache_root)
    python = peer_python(env)
    if (env / ".complete").is_file() and python.exists():
        return python
    tmp = env.with_name(env.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    log(f"[bench] building the peer env (webdataset=={PEER_WEBDATASET}) in {env}")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp)], check=True)
    site = env_site_packages(tmp)
    (site / PTH_NAME).write_text(our_site_packages() + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
         f"webdataset=={PEER_WEBDATASET}"],
        check=True,
    )  # fmt: skip
    # venv writes absolute paths into bin/ scripts; the env is moved into place before anything uses them.
    shutil.rmtree(env, ignore_errors=True)
    os.replace(tmp, env)
    info = check_peer_env(python)
    if info["webdataset"] != PEER_WEBDATASET or not info["file"].startswith(str(env)):
        raise RuntimeError(
            f"peer env {env}: webdataset {info} does not shadow ours ({PEER_WEBDATASET} wanted)"
        )
    (env / ".complete").write_text(json.dumps(info) + "\n")
    return python


@dataclass
class PeerRun:
    """What the peer trains: the same shards, architecture, image size and global batch as ours."""

    shards: list[str]  # absolute .tar paths
    num_samples: int  # samples per epoch (--train-num-samples)
    arch: str
    image_size: int
    batch_size: int  # global batch: one process, so --batch-size
    workers: int  # dataloader worker processes
    epochs: int
    logs: str
    name: str = "peer"
    lr: float = 2e-3
    wd: float = 0.05
    warmup: int = 2
    grad_clip: float = 1.0
    seed: int = 0
    # open_clip_train's --precision; amp_bf16 is bf16 autocast over fp32 weights, as ours
    precision: str = "fp32"
    device: str = "cpu"


def peer_command(python: str | os.PathLike, run: PeerRun, configs_dir: str | os.PathLike) -> list[str]:
    """argv that starts open_clip_train (on the CPU unless `run.device` says otherwise), logging every step, with
    no eval, zero-shot or wandb."""
    return [
        str(python),
        "-c",
        WRAPPER.format(configs=str(configs_dir)),
        "--train-data", "::".join(run.shards),
        "--dataset-type", "webdataset",
        "--train-num-samples", str(run.num_samples),
        "--model", run.arch,
        "--force-image-size", str(run.image_size),
        "--batch-size", str(run.batch_size),
        "--workers", str(run.workers),
        "--epochs", str(run.epochs),
        "--lr", str(run.lr),
        "--wd", str(run.wd),
        "--warmup", str(run.warmup),
        "--grad-clip-norm", str(run.grad_clip),
        "--precision", run.precision,
        "--device", run.device,
        "--log-every-n-steps", "1",
        "--logs", str(run.logs),
        "--name", run.name,
        "--report-to", "",
        "--save-frequency", "0",
        "--zeroshot-frequency", "0",
        "--val-frequency", "0",
        "--seed", str(run.seed),
    ]  # fmt: skip


def parse_peer_log(text: str) -> list[dict[str, float]]:
    """Every step line of an open_clip_train log: epoch, samples seen, data time, batch time, samples/s."""
    out = []
    for m in _STEP_RE.finditer(text):
        out.append(
            {
                "epoch": int(m["epoch"]),
                "seen": int(m["seen"]),
                "total": int(m["total"]),
                "data_s": float(m["data"]),
                "batch_s": float(m["batch"]),
                "samples_per_s": float(m["sps"]),
            }
        )
    return out


def peer_throughput(steps: list[dict[str, float]], batch_size: int, skip_epochs: int = 1) -> dict[str, float]:
    """Steady-state samples/s over the steps of epochs >= skip_epochs (0-based, as open_clip counts them).

    Each step's time is batch / its logged samples/s (open_clip computes that rate from the step's own batch
    time), so this is samples over summed step time, like our per-epoch figure. Between-epoch work (eval,
    checkpoints) is outside both.
    """
    kept = [s for s in steps if s["epoch"] >= skip_epochs and s["samples_per_s"] > 0]
    if not kept:
        raise ValueError(f"no open_clip_train step lines at epoch >= {skip_epochs} (got {len(steps)} in all)")
    seconds = sum(batch_size / s["samples_per_s"] for s in kept)
    data = sum(s["data_s"] for s in kept)
    samples = batch_size * len(kept)
    return {
        "samples_per_s": samples / seconds,
        "steps": len(kept),
        "samples": samples,
        "seconds": seconds,
        "data_wait_fraction": min(data / seconds, 1.0) if seconds > 0 and math.isfinite(data) else 0.0,
    }
