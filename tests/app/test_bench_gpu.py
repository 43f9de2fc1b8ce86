"""The GPU check's pure parts (FLOPs and MFU, nvidia-smi parsing, the JSON, argument refusals), the wheel
bundle's planner, splitter and slimmer on fake files, and one bare DeepSpeed-engine run on the CPU. Nothing
here starts Ray or the peer: `python -m pipelines.bench.gpu --smoke` runs those."""

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from pipelines.bench.gpu import assemble, parse_args, stage2_figures
from pipelines.bench.gpu_parts import gpu_stats, mfu, parse_smi_csv, train_flops_per_sample
from pipelines.gpu_bundle import pinned_versions, plan_calls, slim_wheel, split_file

REPO = Path(__file__).resolve().parents[2]


def test_flops_and_mfu_by_hand():
    assert train_flops_per_sample("ViT-B-16", 224) == pytest.approx(123e9)  # 3 x (35 + 6) GFLOP
    assert train_flops_per_sample("ViT-B-16", 448) == pytest.approx(3e9 * (35 * 4 + 6))  # image tower x4
    assert train_flops_per_sample("uniproto-tiny-rn", 32) is None
    assert mfu(1000.0, 123e9, 790e12) == pytest.approx(123e12 / 790e12)  # ~15.6%
    assert mfu(6422.8, 123e9, 790e12) == pytest.approx(1.0, rel=1e-4)  # the note's ~6,400 samples/s at 100%
    assert mfu(None, 123e9, 790e12) is None and mfu(1000.0, None, 790e12) is None


def test_smi_csv_and_gpu_stats():
    assert parse_smi_csv("87, 12345\n[N/A], 10\n") == [(87.0, 12345.0), (None, 10.0)]
    assert parse_smi_csv("") == []
    samples = [(1.0, 10.0, 500.0), (2.0, 90.0, 9000.0), (3.0, 100.0, 9100.0), (4.0, 0.0, 800.0)]
    steady = gpu_stats(samples, 1.5, 3.5)
    assert steady["gpu_util_mean"] == 95.0 and steady["gpu_util_window"] == "steady"
    assert steady["gpu_mem_used_max_mib"] == 9100.0 and steady["gpu_util_max"] == 100.0
    assert gpu_stats(samples, 10.0, 11.0)["gpu_util_window"] == "whole part"  # no sample inside: all of them
    none = gpu_stats([])
    assert none["gpu_util_mean"] is None and none["gpu_mem_used_max_mib"] is None and none["gpu_samples"] == 0


def test_json_assembly_ratio_goals_and_mfu_only_on_gpu():
    a = parse_args(["--arch", "ViT-B-16", "--image-size", "224", "--device", "cuda"])
    parts = {
        "bare": {"samples_per_s": 2000.0},
        "peer": {"samples_per_s": 1500.0},
        "ours": {"samples_per_s": 1800.0, "data_wait_fraction": 0.01},
        "resume": {"ok": True, "resumed_from_step": 114},
    }
    out = assemble(a, {"gpu": "NVIDIA H200"}, parts, 400.0)
    assert out["ratio"] == 1.2 and out["flops_per_sample"] == pytest.approx(123e9)
    assert out["ours"]["mfu"] == pytest.approx(round(1800 * 123e9 / 790e12, 4))
    assert out["goals"] == {"ours_at_least_peer": True, "data_wait_under_2pct": True, "resume_ok": True}
    assert (
        out["config"]["parts"] == ["bare", "peer", "ours", "features", "resume"] and out["total_s"] == 400.0
    )
    json.dumps(out)  # one JSON line

    cpu = parse_args(["--smoke"])
    failed = {"peer": {"error": "timed out"}, "ours": {"samples_per_s": 50.0, "data_wait_fraction": 0.3}}
    out = assemble(cpu, {}, failed, 10.0)
    assert out["ours"]["mfu"] is None and out["peak_flops"] is None and out["ratio"] is None
    assert out["goals"] == {"ours_at_least_peer": None, "data_wait_under_2pct": False, "resume_ok": None}
    assert out["bare"] is None and out["peer"]["error"] == "timed out"


def test_stage2_figures_from_the_feature_pass_log():
    """The features part keeps the stage-2 benchmark's last JSON line, whatever stderr lines come after it."""
    result = {
        "arch": "ViT-B-16",
        "pool": {"min_size": 1, "max_size": 1, "num_cpus": 1.0, "num_gpus": 1.0},
        "runs": [{"scale": 1, "rows": 9850, "images_per_s": 2100.5}, {"scale": 3, "rows": 29550}],
        "marginal_images_per_s": 6012.3,
        "pass_start_s": 3.1,
        "ours_growth_mib": 1.5,
    }
    log = "[bench] 1x: 99 shards\n" + json.dumps(result) + "\n(raylet) a late line\n"
    got = stage2_figures(log)
    assert got == {
        "images_per_s": 2100.5,
        "rows": 9850,
        "marginal_images_per_s": 6012.3,
        "pass_start_s": 3.1,
        "driver_growth_mib": 1.5,
        "pool": result["pool"],
    }
    with pytest.raises(ValueError, match="no result line"):
        stage2_figures("[bench] 1x: 99 shards\nTraceback ...\n")
    # The part is in the JSON, after the others, and runs before resume (inside the budget first).
    a = parse_args(["--smoke"])
    assert a.parts == ["bare", "peer", "ours", "features", "resume"]
    assert assemble(a, {}, {"features": got}, 1.0)["features"]["marginal_images_per_s"] == 6012.3


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--only", "resume"], "resume needs ours"),
        (["--only", "bare,warp"], "unknown part"),
        (["--epochs", "1"], "--epochs"),
        (["--batch", "2"], "--batch"),
        (["--image-size", "8"], "--image-size"),
        (["--ours-set", "train.no_such_key=1"], "--ours-set"),
    ],
)
def test_argument_refusals(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--smoke", *argv])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_smoke_preset_and_explicit_options():
    a = parse_args(["--smoke", "--batch", "16", "--only", "bare"])
    assert (a.arch, a.image_size, a.device, a.batch, a.parts) == ("uniproto-tiny-rn", 32, "cpu", 16, ["bare"])
    g = parse_args(["--device", "cuda"])
    assert (g.arch, g.image_size, g.batch, g.precision) == ("ViT-B-16", 224, 256, "bf16")
    # Every part gets its whole timeout, and the check fits in one device call (600 s) after the wheels install.
    assert sum(g.budgets.values()) <= g.budget_s <= 510


def test_plan_calls_packs_and_splits():
    sizes = {"ray.whl": 70, "ds.whl": 30, "a.whl": 15, "b.whl": 4}
    calls = plan_calls(sizes, tree=10, limit=60)  # room for 50 bytes of wheels per call
    for call in calls:
        assert sum(length for _, _, length in call) <= 50
    covered = {}
    for call in calls:
        for name, off, length in call:
            covered.setdefault(name, []).append((off, length))
    for name, size in sizes.items():  # every byte of every file, once, in order
        ranges = sorted(covered[name])
        assert ranges[0][0] == 0 and sum(n for _, n in ranges) == size
        assert all(o1 + n1 == o2 for (o1, n1), (o2, _) in zip(ranges, ranges[1:], strict=False))
    assert len(calls) == 3  # 119 bytes of wheels, 50 per call
    assert plan_calls({"x.whl": 40}, tree=10, limit=60) == [[("x.whl", 0, 40)]]
    with pytest.raises(ValueError):
        plan_calls({"x.whl": 1}, tree=60, limit=60)


def test_split_file_joins_back(tmp_path):
    blob = os.urandom(1000)
    src = tmp_path / "big.whl"
    src.write_bytes(blob)
    parts = split_file(
        src, [(0, 400), (400, 400), (800, 200)], [tmp_path / "c1", tmp_path / "c2", tmp_path / "c2"]
    )
    assert [p.parent.name for p in parts] == ["c1", "c2", "c2"]
    joined = b"".join(p.read_bytes() for p in sorted(parts, key=lambda p: p.name))  # `cat big.whl.part*`
    assert joined == blob


def test_slim_wheel_drops_members_and_their_record_lines(tmp_path):
    src, dst = tmp_path / "ray-1.0-py3-none-any.whl", tmp_path / "out" / "ray-1.0-py3-none-any.whl"
    dst.parent.mkdir()
    members = {
        "ray/__init__.py": b"x",
        "ray/jars/big.jar": b"j" * 5000,
        "ray/rllib/a.py": b"r",
        "ray/data/b.py": b"d",
    }
    record = "".join(f"{m},sha256=0,1\n" for m in members) + "ray-1.0.dist-info/RECORD,,\n"
    with zipfile.ZipFile(src, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
        z.writestr("ray-1.0.dist-info/RECORD", record)
    stats = slim_wheel(src, dst, drop=("ray/jars/", "ray/rllib/"))
    with zipfile.ZipFile(dst) as z:
        names = set(z.namelist())
        kept_record = z.read("ray-1.0.dist-info/RECORD").decode()
    assert names == {"ray/__init__.py", "ray/data/b.py", "ray-1.0.dist-info/RECORD"}
    assert "jars" not in kept_record and "rllib" not in kept_record and "ray/data/b.py" in kept_record
    assert stats["dropped"] == 2 and stats["kept"] == 3


def test_pinned_versions_reads_the_constraints_file(tmp_path):
    f = tmp_path / "c.txt"
    f.write_text(
        "# pins\nray==2.60.0\nopen_clip_torch==3.3.0\nPyYAML==6.0.3 ; python_version>'3'\nloose>=1\n"
    )
    assert pinned_versions(f) == {"ray": "2.60.0", "open-clip-torch": "3.3.0", "pyyaml": "6.0.3"}
    pins = pinned_versions()  # the real file pins every wheel of the bundle
    from pipelines.gpu_bundle import BUILT, WHEELS, normalize

    assert all(normalize(n) in pins for n in (*WHEELS, *BUILT))


@pytest.mark.timeout(120)
def test_bare_deepspeed_engine_smoke_on_cpu():
    """The bare part's child as the check runs it: a real DeepSpeed engine (gloo, world size 1) around the
    bare step, bf16 autocast on the CPU, the tiny architecture at 32 px."""
    kwargs = {"arch": "uniproto-tiny-rn", "image_size": 32, "batch": 8, "steps": 2, "warmup": 1,
              "num_classes": 4, "precision": "bf16", "device": "cpu", "zero_stage": 0}  # fmt: skip
    env = dict(os.environ, DS_ACCELERATOR="cpu", PYTHONPATH=str(REPO), OMP_NUM_THREADS="2")
    r = subprocess.run(
        [sys.executable, "-m", "pipelines.bench.gpu_parts", "_bare", json.dumps(kwargs)],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=110,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    line = next(s for s in reversed(r.stdout.splitlines()) if s.startswith("[gpu-check] bare "))
    out = json.loads(line[len("[gpu-check] bare ") :])
    assert out["engine"] == "DeepSpeedEngine" and out["steps"] == 2 and out["samples_per_s"] > 0
    assert out["peak_mem_allocated_mib"] is None  # no GPU: the GPU figures are null
    assert out["loss"] == out["loss"]  # finite, not NaN
