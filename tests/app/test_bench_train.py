"""`uniproto benchmark train`: the peer log parser, the peer env and command, throughput arithmetic, the bare loop,
raw-shard manifests, and (integration) the JSON last-line contract on the tiny dataset."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipelines.bench import peer as bench_peer
from pipelines.bench.peer import PeerRun, parse_peer_log, peer_command, peer_throughput

# Real output of open_clip_train 3.3.0 (uniproto-tiny-rn, 32 px, batch 128, 1 loader worker, CPU, loaded machine).
PEER_LOG = """\
2026-11-24,09:44:36 | INFO | Train Epoch: 0 [1408/1664 (85%)] Data (t): 0.010 Batch (t): 18.208, 7.02984/s, 7.02984/s/gpu LR: 0.001500 Logit Scale: 14.100 Contrastive_loss: 4.0986 (4.9963) Loss: 4.0986 (4.9963)
2026-11-24,09:44:47 | INFO | Train Epoch: 0 [1536/1664 (92%)] Data (t): 0.056 Batch (t): 10.688, 11.9763/s, 11.9763/s/gpu LR: 0.001383 Logit Scale: 14.092 Contrastive_loss: 3.9561 (4.9097) Loss: 3.9561 (4.9097)
2026-11-24,09:45:00 | INFO | Train Epoch: 0 [1664/1664 (100%)] Data (t): 0.038 Batch (t): 12.969, 9.86931/s, 9.86931/s/gpu LR: 0.001259 Logit Scale: 14.085 Contrastive_loss: 3.8868 (4.8310) Loss: 3.8868 (4.8310)
2026-11-24,09:45:00 | INFO | Start epoch 1
2026-11-24,09:45:33 | INFO | Train Epoch: 1 [ 128/1664 (8%)] Data (t): 3.819 Batch (t): 32.778, 3.90505/s, 3.90505/s/gpu LR: 0.001131 Logit Scale: 14.079 Contrastive_loss: 3.7539 (3.7539) Loss: 3.7539 (3.7539)
2026-11-24,09:45:49 | INFO | Train Epoch: 1 [ 256/1664 (15%)] Data (t): 0.018 Batch (t): 16.552, 7.73312/s, 7.73312/s/gpu LR: 0.001000 Logit Scale: 14.075 Contrastive_loss: 3.9289 (3.8414) Loss: 3.9289 (3.8414)
2026-11-24,09:47:56 | INFO | Train Epoch: 1 [1536/1664 (92%)] Data (t): 0.008 Batch (t): 2.090, 61.2307/s, 61.2307/s/gpu LR: 0.000034 Logit Scale: 14.066 Contrastive_loss: 3.6253 (3.7880) Loss: 3.6253 (3.7880)
I1124 09:48:02.495000 30565 torch/_dynamo/utils.py:925] TorchDynamo compilation metrics:
"""


def test_parse_peer_log_reads_every_step_line():
    steps = parse_peer_log(PEER_LOG)
    assert [s["epoch"] for s in steps] == [0, 0, 0, 1, 1, 1]
    assert [s["seen"] for s in steps] == [1408, 1536, 1664, 128, 256, 1536]
    assert steps[0]["total"] == 1664
    assert steps[3]["data_s"] == pytest.approx(3.819)
    assert steps[3]["batch_s"] == pytest.approx(32.778)
    assert steps[5]["samples_per_s"] == pytest.approx(61.2307)
    assert parse_peer_log("nothing here\nStart epoch 0\n") == []


def test_peer_throughput_skips_warmup_epoch_and_sums_step_time():
    steps = parse_peer_log(PEER_LOG)
    r = peer_throughput(steps, batch_size=128, skip_epochs=1)
    seconds = 128 / 3.90505 + 128 / 7.73312 + 128 / 61.2307
    assert r["steps"] == 3 and r["samples"] == 3 * 128
    assert r["seconds"] == pytest.approx(seconds)
    assert r["samples_per_s"] == pytest.approx(3 * 128 / seconds)
    assert r["data_wait_fraction"] == pytest.approx((3.819 + 0.018 + 0.008) / seconds)
    with pytest.raises(ValueError, match="epoch >= 5"):
        peer_throughput(steps, 128, skip_epochs=5)


def test_peer_command_matches_ours_and_registers_our_configs(tmp_path):
    run = PeerRun(
        shards=["/d/train/00000.tar", "/d/train/00001.tar"],
        num_samples=1639,
        arch="uniproto-tiny-rn",
        image_size=32,
        batch_size=128,
        workers=1,
        epochs=3,
        logs=str(tmp_path),
    )
    cmd = peer_command("/env/bin/python", run, "/repo/system/model/configs")
    assert cmd[:2] == ["/env/bin/python", "-c"]
    assert "open_clip.add_model_config('/repo/system/model/configs')" in cmd[2]
    assert "from open_clip_train.main import main" in cmd[2]
    opts = dict(zip(cmd[3::2], cmd[4::2], strict=True))
    assert opts["--train-data"] == "/d/train/00000.tar::/d/train/00001.tar"
    assert opts["--train-num-samples"] == "1639"
    assert opts["--model"] == "uniproto-tiny-rn"
    assert opts["--force-image-size"] == "32"
    assert opts["--batch-size"] == "128"
    assert opts["--device"] == "cpu" and opts["--precision"] == "fp32"
    assert opts["--log-every-n-steps"] == "1" and opts["--report-to"] == ""
    # Every flag is one open_clip_train knows.
    from open_clip_train.params import parse_args

    args = parse_args(cmd[3:])
    assert args.force_image_size == [32] and args.batch_size == 128 and args.workers == 1


def test_peer_env_dir_is_cached_by_key(tmp_path):
    a = bench_peer.peer_env_dir(tmp_path)
    assert a == bench_peer.peer_env_dir(tmp_path)
    assert a.parent == tmp_path and a.name.startswith("peer-env-")


def test_ensure_peer_env_reuses_a_complete_env(tmp_path, monkeypatch):
    env = bench_peer.peer_env_dir(tmp_path)
    (env / "bin").mkdir(parents=True)
    (env / "bin" / "python").symlink_to(sys.executable)
    (env / ".complete").write_text("{}")
    monkeypatch.setattr(bench_peer.subprocess, "run", lambda *a, **k: pytest.fail("rebuilt a cached env"))
    assert bench_peer.ensure_peer_env(tmp_path) == env / "bin" / "python"


@pytest.mark.integration
def test_ensure_peer_env_builds_webdataset_0_2_86(tmp_path):
    python = bench_peer.ensure_peer_env(tmp_path, log=lambda *_: None)
    info = bench_peer.check_peer_env(python)
    assert info["webdataset"] == bench_peer.PEER_WEBDATASET
    assert info["file"].startswith(str(tmp_path))


def test_ours_throughput_uses_epochs_after_the_first():
    from pipelines.bench.train import ours_throughput

    reports = [
        {"kind": "epoch", "epoch": 1, "samples": 1536, "epoch_s": 30.0, "data_wait_fraction": 0.5},
        {"kind": "checkpoint", "epoch": 1.5, "step": 18},
        {"kind": "epoch", "epoch": 2, "samples": 1536, "epoch_s": 10.0, "data_wait_fraction": 0.1},
        {"kind": "epoch", "epoch": 3, "samples": 1408, "epoch_s": 6.0, "data_wait_fraction": 0.0},
    ]
    r = ours_throughput(reports, skip_epochs=1)
    assert r["epochs"] == 2 and r["samples"] == 2944
    assert r["samples_per_s"] == pytest.approx(2944 / 16.0)
    assert r["data_wait_fraction"] == pytest.approx(1.0 / 16.0)
    with pytest.raises(ValueError):
        ours_throughput(reports[:2])


def test_ours_overrides_keep_text_filter_and_prototype_loss_on(tmp_path):
    from pipelines.bench.train import ours_overrides
    from system.config import load_config

    sets = ours_overrides("/data", tmp_path, "uniproto-tiny-rn", 32, 128, 2, 3, 2)
    cfg = load_config(None, [s for s in sets if s != "--set"])
    assert cfg.train.micro_batch_size * cfg.train.num_workers == 128
    assert cfg.train.zero_stage == 0 and cfg.optim.fused  # the CPU defaults: no partitioning, fused AdamW
    assert cfg.ray.num_cpus == 4 and cfg.train.cpus_per_worker == 1.0
    assert cfg.loss.proto_weight > 0 and cfg.loss.contrastive_weight > 0
    assert cfg.data.text_scorer and cfg.sweep.space is None
    sets = ours_overrides("/data", tmp_path, "uniproto-tiny-rn", 32, 128, 2, 3, 2, zero_stage=1, fused=False)
    cfg = load_config(None, [s for s in sets if s != "--set"])
    assert cfg.train.zero_stage == 1 and not cfg.optim.fused
    with pytest.raises(ValueError, match="multiple"):
        ours_overrides("/data", tmp_path, "uniproto-tiny-rn", 32, 127, 2, 3, 2)


def test_bare_loop_trains_a_few_steps():
    from pipelines.bench.bare import bare_loop

    r = bare_loop("uniproto-tiny-rn", 32, batch=8, steps=2, warmup=1, num_classes=4, threads=1)
    assert r["steps"] == 2 and r["threads"] == 1
    assert r["samples_per_s"] > 0 and r["loss"] == r["loss"]  # finite, not NaN


def test_runs_summary_is_the_mean_with_its_spread():
    from pipelines.bench.stats import runs_summary

    r = runs_summary([800.0, 700.0])
    assert r["mean"] == pytest.approx(750.0)
    assert r["spread"] == pytest.approx(100.0 / 750.0)
    assert r["runs"] == [800.0, 700.0]
    assert runs_summary([640.0])["spread"] == 0.0
    with pytest.raises(ValueError):
        runs_summary([])


def test_idle_actor_cost_is_the_slowdown_of_the_means_in_all_and_per_actor():
    from pipelines.bench.bare import idle_actor_cost
    from pipelines.bench.train import parse_args

    r = idle_actor_cost([800.0, 700.0], [660.0, 690.0], actors=10)
    assert r["without"] == 750.0 and r["with"] == 675.0
    assert r["slowdown"] == pytest.approx(0.1) and r["slowdown_per_actor"] == pytest.approx(0.01)
    assert r["runs_with"] == [660.0, 690.0]
    # a loop that ran faster with the actors shows as a negative slowdown, not as zero
    assert idle_actor_cost([500.0], [550.0], actors=4)["slowdown"] == pytest.approx(-0.1)
    a = parse_args(["--only", "idle", "--idle-actors", "6"])
    assert a.only == ["idle"] and a.idle_actors == 6


def test_bare_step_alternates_two_batches_and_trains():
    from pipelines.bench.bare import bare_step

    step = bare_step("uniproto-tiny-rn", 32, 8, 5, seed=0)
    losses = [float(step().detach()) for _ in range(6)]
    assert all(x == x and x > 0 for x in losses)  # finite and positive
    assert losses[4] < losses[0] and losses[5] < losses[1]  # each batch's loss falls as the model trains


def test_benchmark_args_pass_our_overrides_and_refuse_zero_bare_runs():
    from pipelines.bench.train import parse_args

    a = parse_args(["--set", "data.shuffle_buffer=0", "--set", "train.grad_accum=2"])
    assert a.sets == ["data.shuffle_buffer=0", "train.grad_accum=2"] and a.bare_repeats == 2
    with pytest.raises(SystemExit):
        parse_args(["--bare-repeats", "0"])


def test_raw_shard_spec_gets_a_scanned_manifest(tiny_dataset, tmp_path, monkeypatch):
    from pipelines.bench.inputs import resolve
    from system.data.dataset_dir import load_manifest

    src = load_manifest(tiny_dataset)
    n = len(src.splits["train"].shards)
    spec = f"{tiny_dataset}/train/{{00000..{n - 1:05d}}}.tar"
    root, paths, num = resolve(spec, tmp_path)
    m = load_manifest(root)
    assert num == src.splits["train"].num_samples == sum(m.train_counts)
    assert m.train_counts == src.train_counts and m.class_names == src.class_names
    assert len(paths) == n
    # A dataset directory is used as is.
    root2, paths2, num2 = resolve(str(tiny_dataset), tmp_path)
    assert Path(root2) == Path(tiny_dataset).resolve() and num2 == num and len(paths2) == n
    # A relative spec comes back absolute: the runs start in the repository root, not in the caller's directory.
    monkeypatch.chdir(Path(tiny_dataset).parent)
    root3, paths3, _ = resolve(Path(tiny_dataset).name, tmp_path)
    assert root3 == root2 and paths3 == paths2 and all(Path(p).is_absolute() for p in paths3)


def test_cli_lists_benchmark_and_refuses_unknown_target(capsys):
    from pipelines.cli import COMMANDS, main

    assert "benchmark" in COMMANDS
    assert main(["benchmark", "eval"]) == 2


@pytest.mark.integration
@pytest.mark.timeout(900)
def test_benchmark_last_line_is_json(tiny_dataset, tmp_path, capsys):
    """Ours (one A/B round: two runs) + peer + bare (twice) + floor on the tiny dataset: the last line is the JSON
    contract, its ratios computed from its own figures (the figures themselves are timings, not asserted); each
    of ours' runs has its own run directory, the shared --set in both resolved configs, B's override in B's only."""
    from pipelines.cli import main

    rc = main(
        ["benchmark", "train", "--shards", str(tiny_dataset), "--cpus", "2", "--epochs", "2", "--batch", "32",
         "--bare-steps", "2", "--bare-warmup", "1", "--workdir", str(tmp_path / "w"),
         "--set", "data.shuffle_buffer=0", "--ab", "data.prefetch_batches=2", "--ab-rounds", "1"]
    )  # fmt: skip
    assert rc == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    for key in ("ours", "peer", "ratio", "overhead", "bare", "cpus", "global_batch", "load_before"):
        assert key in result
    assert result["ours"] > 0 and result["peer"] > 0 and result["bare"] > 0
    assert result["ratio"] == pytest.approx(result["ours"] / result["peer"], rel=1e-2)
    assert result["floor"] > 0 and len(result["bare_detail"]["runs"]) == 2
    assert result["bare"] == pytest.approx(sum(result["bare_detail"]["runs"]) / 2, rel=1e-3)
    assert result["floor_overhead"] == pytest.approx(1 - result["floor"] / result["bare"], abs=2e-3)
    assert result["overhead_above_floor"] == pytest.approx(1 - result["ours"] / result["floor"], abs=2e-3)
    assert result["ours_sets"] == ["data.shuffle_buffer=0"]
    # The A/B block: ours is A's figure, the ratio B's over A's.
    ab = result["ab"]
    assert len(ab["a_runs"]) == len(ab["b_runs"]) == 1 and ab["sets"] == ["data.prefetch_batches=2"]
    assert ab["ratio"] == pytest.approx(ab["b_runs"][0] / ab["a_runs"][0], rel=1e-3)
    assert result["ours"] == pytest.approx(ab["a_runs"][0], rel=1e-3)
    a_cfg = (tmp_path / "w" / "ours-a0" / "bench-ours" / "config.yaml").read_text()
    b_cfg = (tmp_path / "w" / "ours-b0" / "bench-ours" / "config.yaml").read_text()
    assert "shuffle_buffer: 0" in a_cfg and "shuffle_buffer: 0" in b_cfg  # the extra override reached both
    assert "prefetch_batches: 2" in b_cfg and "prefetch_batches: 2" not in a_cfg
    # CPU-s by process role add up to the run's CPU-s; the Train worker and the data pipeline both show
    roles = result["ours_detail"]["cpu_s_by_role"]
    assert roles.get("train_worker", 0) > 0 and roles.get("data", 0) > 0 and roles.get("driver", 0) > 0
    assert sum(roles.values()) == pytest.approx(result["ours_detail"]["cpu_s"], rel=0.02, abs=0.5)


def test_process_roles_from_titles():
    from pipelines.bench.procs import process_role

    assert process_role("python", is_root=True) == "driver"
    assert process_role("ray::RayTrainWorker.run_train_fn", False) == "train_worker"
    assert process_role("ray::ReadReadShards->MapBatches(decode_and_record)", False) == "data"
    assert process_role("ray::MapWorker(MapBatches(TextPairer)).submit", False) == "data"
    assert process_role("ray::SplitCoordinator.get", False) == "data"
    assert process_role("ray::TrainController.run", False) == "ray_actors"
    assert process_role("ray::IDLE", False) == "ray_idle"
    assert process_role("raylet", False) == "other" and process_role("gcs_server", False) == "other"


def test_tree_monitor_splits_cpu_by_role_and_keeps_a_workers_last_role(monkeypatch):
    """Growth between samples goes to the role a process has at the sample; an idle-titled worker keeps the
    role it had before; the roles add up to the total."""
    import types

    import psutil

    from pipelines.bench import procs

    titles = {1: ["python"], 2: ["ray::ReadReadShards->MapBatches(x)"], 3: ["ray::IDLE"]}
    cpu = {1: 1.0, 2: 2.0, 3: 0.5}

    class Proc:
        def __init__(self, pid):
            self.pid = pid

        def children(self, recursive=False):
            return [Proc(2), Proc(3)]

        def oneshot(self):
            import contextlib

            return contextlib.nullcontext()

        def cpu_times(self):
            return types.SimpleNamespace(user=cpu[self.pid], system=0.0)

        def memory_info(self):
            return types.SimpleNamespace(rss=2**20)

        def cmdline(self):
            return titles[self.pid]

        def name(self):
            return titles[self.pid][0]

    monkeypatch.setattr(psutil, "Process", Proc)
    mon = procs.TreeMonitor(1, interval=3600)  # the thread samples once; the rest by hand
    mon._stop.set()
    mon._thread.join()
    titles[2] = ["ray::IDLE"]  # the data worker between two tasks
    cpu.update({1: 1.5, 2: 5.0, 3: 0.75})
    mon.sample()
    assert mon.by_role == pytest.approx({"driver": 1.5, "data": 5.0, "ray_idle": 0.75})
    out = mon.stop()
    assert out["cpu_s"] == pytest.approx(7.2, abs=0.06) and out["peak_rss_mb"] == 3.0
    assert sum(out["cpu_s_by_role"].values()) == pytest.approx(out["cpu_s"], abs=0.2)
    assert procs.role_line(out).startswith("CPU-s by role: data 5.0 (68%), driver 1.5 (21%)")
    assert [sample[2] for sample in mon.timeline] == [2, 2, 2]  # the two ray:: workers, never the driver
    titles[2] = ["ray::RayTrainWorker.__init__"]
    mon.sample()
    assert mon.timeline[-1][2] == 1  # a Train worker is not counted beside itself


def test_cores_by_role_over_a_window():
    from pipelines.bench.procs import cores_by_role

    timeline = [
        (10.0, {"driver": 1.0}, 3),
        (11.0, {"driver": 1.5, "train_worker": 0.5}, 12),  # first sample inside [10.5, 14.5]
        (13.0, {"driver": 1.6, "train_worker": 3.5, "data": 0.6}, 11),
        (14.0, {"driver": 1.7, "train_worker": 5.0, "data": 1.0}, 10),  # last sample inside
        (15.0, {"driver": 9.0, "train_worker": 9.0, "data": 9.0}, 2),
    ]
    out = cores_by_role(timeline, 10.5, 14.5)
    assert out["seconds"] == 3.0
    assert out["cores"] == {"train_worker": 1.5, "data": pytest.approx(1 / 3, abs=1e-3), "driver": 0.067}
    assert list(out["cores"]) == ["train_worker", "data", "driver"]  # largest first
    assert out["total"] == pytest.approx(1.5 + 1 / 3 + 0.2 / 3, abs=2e-3)
    # Ray worker processes beside the Train worker: the mean over the samples inside
    assert out["ray_processes"] == 11.0
    assert cores_by_role(timeline, 10.5, 11.5) is None  # one sample inside: no window
    untallied = [(t, r) for t, r, _ in timeline]  # samples without a process count: none reported
    assert "ray_processes" not in cores_by_role(untallied, 10.5, 14.5)


@pytest.mark.integration  # its child process starts a local Ray
@pytest.mark.timeout(240)
def test_idle_child_runs_the_loop_without_and_with_idle_actors():
    """The `--only idle` child for real (a local Ray, real actors), at a size that only checks the path."""
    import os
    import subprocess

    repo = Path(__file__).resolve().parents[2]
    env = dict(os.environ, PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "pipelines.bench.bare", "idle", "--arch", "uniproto-tiny-rn", "--image-size", "32",
           "--batch", "8", "--steps", "2", "--warmup", "1", "--classes", "5", "--threads", "1",
           "--actors", "2", "--rounds", "2"]  # fmt: skip
    r = subprocess.run(cmd, env=env, cwd=repo, capture_output=True, text=True, timeout=230)
    assert r.returncode == 0, r.stderr[-3000:]
    phases = [s.split()[3] for s in r.stdout.splitlines() if s.startswith("[bench] idle actors: ")]
    assert phases == ["without", "with", "with", "without"]  # ABBA
    line = next(s for s in r.stdout.splitlines() if s.startswith("[bench] idle {"))
    out = json.loads(line[len("[bench] idle ") :])
    assert out["actors"] == 2 and len(out["runs_without"]) == 2 and len(out["runs_with"]) == 2
    assert out["without"] > 0 and out["with"] > 0
    assert out["slowdown"] == pytest.approx(1 - out["with"] / out["without"], abs=1e-3)


def test_ab_summary_means_ratio_and_rounds():
    from pipelines.bench.stats import ab_summary

    s = ab_summary([400.0, 500.0], [440.0, 450.0])
    assert s["a"] == 450.0 and s["b"] == 445.0
    assert s["ratio"] == pytest.approx(445 / 450, abs=1e-4)
    assert s["round_ratios"] == [1.1, 0.9] and not s["all_rounds_agree"]  # straddles 1.0: inside the drift
    assert ab_summary([100.0, 100.0], [90.0, 95.0])["all_rounds_agree"]
    with pytest.raises(ValueError, match="same number of runs"):
        ab_summary([1.0, 2.0], [1.0])


def test_ab_args_are_checked_before_any_run(capsys):
    from pipelines.bench.train import parse_args

    a = parse_args(["--only", "ours", "--ab", "data.shuffle_buffer=0", "--ab", "data.prefetch_batches=2"])
    assert a.ab == ["data.shuffle_buffer=0", "data.prefetch_batches=2"] and a.ab_rounds == 2
    refused = [
        (["--ab", "shuffle"], "KEY=VALUE"),
        (["--ab", "data.shufle_buffer=0"], "data.shufle_buffer"),  # unknown key, named
        (["--set", "data.shuffle_buffer=x"], "data.shuffle_buffer"),  # wrong type, named
        (["--ab-rounds", "0"], "--ab-rounds"),
        (["--only", "peer", "--ab", "data.shuffle_buffer=0"], "--only ours"),  # nothing to compare
    ]
    for bad, says in refused:
        with pytest.raises(SystemExit):
            parse_args(bad)
        assert says in capsys.readouterr().err


def test_ab_runs_alternate_and_only_b_gets_the_overrides(tiny_dataset, tmp_path, monkeypatch):
    """The A/B orchestration with the child runs replaced by a stand-in that writes their reports (the real
    child is run by test_benchmark_last_line_is_json): order A B B A, B's overrides
    after the shared --set, figures from each run's own reports."""
    import pipelines.bench.train as bt

    calls = []

    def fake_run_tree(cmd, env, cpus, log_path, echo, timeline=None):
        b = "data.prefetch_batches=3" in cmd
        calls.append(("b" if b else "a", cmd))
        rate = 300.0 if b else 200.0 + len(calls)  # A drifts upwards run by run
        epoch = {"kind": "epoch", "samples": 600, "epoch_s": 600 / rate, "data_wait_fraction": 0.0}
        Path(cmd[4]).write_text("".join(json.dumps({**epoch, "epoch": e}) + "\n" for e in (1, 2)))
        return {"rc": 0, "wall_s": 1.0, "cpu_s": 1.0, "peak_rss_mb": 1.0, "cpu_s_by_role": {}}

    monkeypatch.setattr(bt, "run_tree", fake_run_tree)
    a = bt.parse_args(["--shards", str(tiny_dataset), "--only", "ours", "--epochs", "2", "--workdir",
                       str(tmp_path), "--set", "data.shuffle_buffer=0", "--ab", "data.prefetch_batches=3"])  # fmt: skip
    result = bt.benchmark(a, say=lambda *_: None, stage1="pipelines.pretrain")
    assert [side for side, _ in calls] == ["a", "b", "b", "a"]
    for side, cmd in calls:
        assert cmd[3:6] == ["_ours", cmd[4], "pipelines.pretrain"]  # the child runs the module it is given
        sets = [cmd[i + 1] for i, x in enumerate(cmd) if x == "--set"]
        assert "data.shuffle_buffer=0" in sets
        assert (sets[-1] == "data.prefetch_batches=3") == (side == "b")
    ab = result["ab"]
    assert ab["a_runs"] == pytest.approx([201.0, 204.0]) and ab["b_runs"] == pytest.approx([300.0, 300.0])
    assert result["ours"] == pytest.approx(202.5) and ab["all_rounds_agree"]
    assert ab["round_ratios"] == [round(300 / 201, 4), round(300 / 204, 4)]
