"""`make gpu-bundle`: the wheels that the GPU check (pipelines.bench.gpu) needs and the GPU machine lacks.

The GPU machine runs Python 3.12 with its own torch 2.11 (CUDA 13), numpy, pyarrow, pandas, pillow, timm,
regex, pyyaml, safetensors, huggingface_hub, psutil, aiohttp, grpcio, protobuf, msgpack, click, requests, ...
and has no network. What the check imports beyond that travels as cp312 manylinux wheels, at the versions of
cluster/constraints.txt, and is installed there with `pip install --no-index --no-deps --target /tmp/site`:

    ray (slimmed, below)            Ray Data + Ray Train + Ray Tune (ours, resume)
    jsonschema, jsonschema-specifications, referencing, rpds-py
                                    `import ray` validates runtime envs with jsonschema
    deepspeed (built here)          the engine of bare and ours; only a 2 MB sdist exists: `pip wheel
                                    --no-deps --no-build-isolation` makes a pure-python wheel (ops are
                                    JIT-built on use; we pass a torch AdamW, so none is built)
    hjson, pydantic, pydantic-core, annotated-types, typing-inspection, typing_extensions
                                    DeepSpeed's config (typing_extensions: pydantic wants >= 4.16; a newer one
                                    shadows the machine's harmlessly)
    open_clip_torch                 the models, and open_clip_train (the peer)
    webdataset 1.0.2, braceexpand   our shard reader and shard specs
    ftfy, wcwidth                   open_clip's tokenizer
    .whl/peer/webdataset 0.2.86     the peer alone (open_clip_train breaks on webdataset 1.0): installed
                                    into its own folder, put first on the peer's PYTHONPATH

torch, torchvision and nvidia-* wheels are never bundled: the machine's own CUDA build is used.

Sizes (measured 2026-12): the ray 2.60.0 cp312 wheel is 79.3 MB (75.6 MiB), more than the 64 MiB one call may
carry. The slim copy drops what a Train + Data + Tune job on one node never imports (`SLIM_DROP`: the Java
jars, 30.7 MiB compressed; RLlib, Serve, ray.llm and the dashboard's web front end, about 5 MiB) and rewrites
RECORD: about 40 MiB. With the other wheels (about 8 MiB) and the working tree (about 1.3 MiB, `git ls-files |
xargs du -ch`), one call carries about 50 MiB. `--check PYTHON` installs the bundle into a throwaway folder
and runs `import ray, ray.train, ray.data, ray.tune, deepspeed, open_clip, webdataset; ray.init()` with that
interpreter (a Python 3.12). Should a bundle ever outgrow one call, `plan_calls` cuts it into calls (a file
too big for one is split into parts, joined there with `cat`), printed with the carry of each.

    python -m pipelines.gpu_bundle [--out .whl] [--limit-mib 60] [--check /path/to/python3.12]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from pipelines.bench.peer import PEER_WEBDATASET

REPO = Path(__file__).resolve().parent.parent
CONSTRAINTS = REPO / "cluster" / "constraints.txt"
MIB = 2**20

# Downloaded as binary cp312 wheels (pinned by cluster/constraints.txt); deepspeed is built from its sdist.
WHEELS = (
    "ray",
    "jsonschema",
    "jsonschema-specifications",
    "referencing",
    "rpds-py",
    "hjson",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "typing-inspection",
    "typing-extensions",
    "open-clip-torch",
    "webdataset",
    "braceexpand",
    "ftfy",
    "wcwidth",
)
BUILT = ("deepspeed",)
# Parts of the ray wheel a one-node Train + Data + Tune job never imports.
SLIM_DROP = ("ray/jars/", "ray/rllib/", "ray/serve/", "ray/llm/", "ray/dashboard/client/")
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
)
CHECK = (
    "import ray, ray.train, ray.data, ray.tune, deepspeed, open_clip, webdataset, braceexpand, ftfy; "
    "from ray.train.torch import TorchTrainer; ray.init(num_cpus=1, include_dashboard=False); "
    "print('ok', ray.__version__, deepspeed.__version__, open_clip.__version__, webdataset.__version__); "
    "ray.shutdown()"
)


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_versions(path: Path = CONSTRAINTS) -> dict[str, str]:
    """name -> version of every `name==version` line of a pip constraints file (names normalised)."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([^\s;#]+)", line)
        if m:
            out[normalize(m[1])] = m[2]
    return out


def pip_download(specs: list[str], dest: Path, python: str = sys.executable) -> None:
    """cp312 manylinux wheels of exactly `specs` (no dependencies) into `dest`."""
    platforms = [x for p in PLATFORMS for x in ("--platform", p)]
    subprocess.run(
        [python, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
         "--python-version", "3.12", "--implementation", "cp", *platforms, "-d", str(dest), *specs],
        check=True,
    )  # fmt: skip


def pip_build(specs: list[str], dest: Path, python: str = sys.executable) -> None:
    """Pure-python wheels built from sdists; no build isolation, so DeepSpeed's setup sees this venv's torch
    and needs no second torch download. DS_BUILD_OPS=0: no op is compiled ahead (JIT-built on use)."""
    env = dict(os.environ, DS_BUILD_OPS="0")
    subprocess.run(
        [python, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(dest), *specs],
        check=True,
        env=env,
    )


def slim_wheel(src: Path, dst: Path, drop: tuple[str, ...] = SLIM_DROP) -> dict[str, int]:
    """Copy wheel `src` to `dst` without the members under `drop`, their RECORD lines removed too (pip
    installs what RECORD lists). Returns the members and compressed bytes kept and dropped."""
    kept = dropped = kept_bytes = dropped_bytes = 0
    tmp = dst.with_suffix(".tmp")
    with (
        zipfile.ZipFile(src) as zin,
        zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as zout,
    ):
        record = next(i for i in zin.infolist() if i.filename.endswith(".dist-info/RECORD"))
        for info in zin.infolist():
            if info.filename.startswith(drop):
                dropped, dropped_bytes = dropped + 1, dropped_bytes + info.compress_size
                continue
            if info is record:
                lines = zin.read(info).decode().splitlines(keepends=True)
                zout.writestr(info, "".join(x for x in lines if not x.startswith(drop)))
            else:
                zout.writestr(info, zin.read(info))
            kept, kept_bytes = kept + 1, kept_bytes + info.compress_size
    os.replace(tmp, dst)
    return {"kept": kept, "dropped": dropped, "kept_bytes": kept_bytes, "dropped_bytes": dropped_bytes}


def tree_bytes(repo: Path = REPO) -> int:
    """Bytes of the working tree that travels with each call: tracked files and untracked ones not ignored."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=repo,
        capture_output=True,
        check=True,
    ).stdout
    paths = {p for p in out.decode().split("\0") if p}
    return sum((repo / p).stat().st_size for p in paths if (repo / p).is_file())


def plan_calls(files: dict[str, int], tree: int, limit: int) -> list[list[tuple[str, int, int]]]:
    """Pack files (name -> bytes) into calls of at most `limit` bytes each, the working tree (`tree` bytes,
    sent with every call) counted in each. First-fit decreasing; a file larger than one call's room is cut
    into parts that go to consecutive calls. Each call: a list of (name, offset, length)."""
    room = limit - tree
    if room <= 0:
        raise ValueError(f"the working tree alone ({tree} bytes) fills the {limit}-byte limit")
    pieces = []
    for name, size in sorted(files.items(), key=lambda kv: -kv[1]):
        offsets = range(0, max(size, 1), room)
        pieces += [(name, off, min(room, size - off)) for off in offsets]
    calls: list[list[tuple[str, int, int]]] = []
    used: list[int] = []
    for piece in pieces:
        i = next((i for i, u in enumerate(used) if u + piece[2] <= room), None)
        if i is None:
            calls.append([])
            used.append(0)
            i = len(calls) - 1
        calls[i].append(piece)
        used[i] += piece[2]
    return calls


def split_file(path: Path, parts: list[tuple[int, int]], out_dirs: list[Path]) -> list[Path]:
    """Write byte ranges (offset, length) of `path` as `<out_dir>/<name>.part<12-digit offset>`, one per
    range: zero-padded offsets sort in order, so `cat <name>.part* > <name>` joins them on the other side."""
    written = []
    with open(path, "rb") as f:
        for (off, length), out in zip(parts, out_dirs, strict=True):
            out.mkdir(parents=True, exist_ok=True)
            f.seek(off)
            target = out / f"{path.name}.part{off:012d}"
            target.write_bytes(f.read(length))
            written.append(target)
    return written


def lay_out_calls(out: Path, calls: list[list[tuple[str, int, int]]], sizes: dict[str, int]) -> None:
    """Sort the bundle into `out/call-N/` (carry `.whl/call-N` in call N): whole files moved, the parts of a
    split one written there (`split_file`)."""
    for i, call in enumerate(calls):
        for name, off, length in call:
            target = out / f"call-{i + 1}" / name
            if length == sizes[name]:
                target.parent.mkdir(parents=True, exist_ok=True)
                os.replace(out / name, target)
            else:
                split_file(out / name, [(off, length)], [target.parent])
    for name in sizes:
        (out / name).unlink(missing_ok=True)


def check_install(python: str, wheel_dir: Path) -> str:
    """Install the bundle with `python` (a 3.12) into a throwaway folder and import what the check imports."""
    with tempfile.TemporaryDirectory(prefix="gpu-bundle-check-") as site:
        wheels = sorted(str(p) for p in wheel_dir.glob("*.whl"))
        subprocess.run(
            [python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
             "--target", site, *wheels],
            check=True,
        )  # fmt: skip
        env = dict(os.environ, PYTHONPATH=site, RAY_USAGE_STATS_ENABLED="0")
        out = subprocess.run(
            [python, "-c", CHECK], env=env, capture_output=True, text=True, timeout=300, cwd=site
        )
        if out.returncode != 0:
            raise RuntimeError(f"import check failed:\n{out.stderr[-3000:]}")
        return out.stdout.strip().splitlines()[-1]


def build(out: Path, python: str = sys.executable) -> dict[str, int]:
    """Fill `out` (emptied first) with the bundle; returns name -> bytes of every wheel in it."""
    pins = pinned_versions()
    missing = [n for n in (*WHEELS, *BUILT) if normalize(n) not in pins]
    if missing:
        raise ValueError(f"{CONSTRAINTS}: no pinned version for {missing}")
    shutil.rmtree(out, ignore_errors=True)
    raw = out / "raw"
    raw.mkdir(parents=True)
    pip_download([f"{n}=={pins[normalize(n)]}" for n in WHEELS], raw, python)
    pip_build([f"{n}=={pins[normalize(n)]}" for n in BUILT], raw, python)
    pip_download([f"webdataset=={PEER_WEBDATASET}"], out / "peer", python)
    for wheel in raw.glob("*.whl"):
        if wheel.name.startswith("ray-"):
            slim_wheel(wheel, out / wheel.name)
        else:
            os.replace(wheel, out / wheel.name)
    shutil.rmtree(raw)
    return {str(p.relative_to(out)): p.stat().st_size for p in sorted(out.rglob("*.whl"))}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipelines.gpu_bundle", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(REPO / ".whl"), help="bundle folder (git-ignored; emptied first)")
    p.add_argument("--limit-mib", type=float, default=60.0, help="bytes one call may carry, tree included")
    p.add_argument(
        "--check", metavar="PYTHON", help="a Python 3.12 to install the bundle into and import with"
    )
    a = p.parse_args(argv)
    out = Path(a.out).resolve()
    sizes = build(out)
    tree = tree_bytes()
    limit = int(a.limit_mib * MIB)
    calls = plan_calls(sizes, tree, limit)
    if len(calls) > 1:
        lay_out_calls(out, calls, sizes)
    summary = {
        "wheels_mib": {k: round(v / MIB, 2) for k, v in sizes.items()},
        "wheels_total_mib": round(sum(sizes.values()) / MIB, 2),
        "tree_mib": round(tree / MIB, 2),
        "per_call_mib": [round((tree + sum(x[2] for x in c)) / MIB, 2) for c in calls],
        "calls": len(calls),
    }
    if a.check:
        summary["check"] = check_install(a.check, out)
    (out / "BUNDLE.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
