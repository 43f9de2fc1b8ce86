"""Sweeps on a real local Ray: ASHA stops weak trials (on a stand-in trainable, in seconds), and a real sweep that
loses a trial's process (Tune restarts the trial, whose stage 1 resumes) and then its driver (the same command
resumes the sweep, keeping finished trials and stage-1 progress)."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import ray

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _stand_in_trial(config):
    """Reports like a real trial: val_score per epoch, then a final report with a trial.json checkpoint."""
    import tempfile

    from ray import tune

    q = config["loss.proto_temperature"]
    for epoch in (1, 2, 3):
        tune.report({"val_score": q * epoch, "epoch": epoch})
    with tempfile.TemporaryDirectory() as d:
        Path(d, "trial.json").write_text(
            json.dumps({"best_lambda": 0.5, "val_top1": q * 4, "params": config})
        )
        tune.report(
            {"val_score": q * 4, "val_top1": q * 4, "best_lambda": 0.5},
            checkpoint=tune.Checkpoint.from_directory(d),
        )


def test_asha_stops_weak_trials_and_they_are_counted(tmp_path):
    from ray import tune

    from system.config import config_from_dict
    from system.reports import sweep as sr
    from system.runtime.sweep import METRIC, trial_record, trial_scheduler

    cfg = config_from_dict(
        {}, {"sweep.scheduler": "asha", "train.epochs": 3, "sweep.asha_reduction_factor": 2.0}
    )
    # tests/ is not a package workers can import: ship the stand-in trainable by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        tuner = tune.Tuner(
            _stand_in_trial,
            # best first: each later trial is worse at the first rung than the ones before it
            param_space={"loss.proto_temperature": tune.grid_search([4.0, 3.0, 2.0, 1.0])},
            tune_config=tune.TuneConfig(
                metric=METRIC, mode="max", scheduler=trial_scheduler(cfg, 3), max_concurrent_trials=1
            ),
            run_config=tune.RunConfig(name="asha", storage_path=str(tmp_path), verbose=0),
        )
        records = [trial_record(r) for r in tuner.fit()]
    finally:
        ray.shutdown()
    by_q = {r["params"]["loss.proto_temperature"]: r for r in records}
    assert by_q[4.0]["status"] == "completed" and by_q[4.0]["iterations"] == 4
    # a completed trial's outputs are read where local storage keeps them, not copied
    assert by_q[4.0]["best_lambda"] == 0.5 and Path(by_q[4.0]["path"]).is_relative_to(tmp_path)
    stopped = [q for q, r in by_q.items() if r["status"] == "stopped"]
    assert stopped and 4.0 not in stopped
    assert all(by_q[q]["iterations"] < 4 for q in stopped)
    e = sr.efficiency(records, wall_s=1.0)
    assert e["stopped_early"] == len(stopped) and e["completed"] == 4 - len(stopped)


def _sweep_cmd(root, out):
    sets = {
        "data.root": root,
        "run.output_dir": out,
        "run.name": "resume",
        "data.image_size": 32,
        "train.epochs": 3,
        "train.steps": "null",
        "train.micro_batch_size": 16,
        "finetune.epochs": 5,
        "ray.no_progress_timeout_s": 120,
        "sweep.search": "optuna",
        "sweep.max_concurrent": 1,
        "eval.stage1_val_samples": 48,
    }
    cmd = ["--config", "pipelines/configs/demo.yaml", "--space", "tune_spaces/proto_temperature.yaml"]
    cmd += ["--samples", "2"]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd


def _registered(run_dir: Path) -> bool:
    """Whether Ray Train's controller has registered a checkpoint of this run (its snapshot names one)."""
    try:
        snap = json.loads((run_dir / "checkpoint_manager_snapshot.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(snap.get("latest_checkpoint_result"))


def _kill_trial_process(session: int) -> int | None:
    """SIGKILL the Tune trial actor (a function trainable: process title `ray::ImplicitFunc...`) of the sweep
    started in `session`."""
    import psutil

    for p in psutil.process_iter(["pid", "cmdline"]):
        try:
            cmd = p.info["cmdline"] or []
            if cmd and cmd[0].startswith("ray::ImplicitFunc") and os.getsid(p.pid) == session:
                os.kill(p.pid, signal.SIGKILL)
                return p.pid
        except (psutil.Error, ProcessLookupError, PermissionError):
            continue
    return None


def _stage1_runs(storage: Path) -> list[tuple[str, list[str]]]:
    """Stage-1 Train runs under the sweep's storage, oldest first, each with its checkpoint directories."""
    runs = [d for d in storage.glob("resume-stage1-*") if d.is_dir()]
    runs.sort(key=lambda d: d.stat().st_ctime)
    # checkpoint_manager_snapshot.json also matches the pattern: directories only
    return [(d.name, sorted(c.name for c in d.glob("checkpoint_*") if c.is_dir())) for d in runs]


@pytest.mark.timeout(1500)
def test_killed_sweep_resumes(tiny_dataset, tmp_path):
    from pipelines.sweep import main

    args = _sweep_cmd(tiny_dataset, tmp_path)
    storage = tmp_path / "resume" / "ray"
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipelines.sweep", *args],
        cwd=ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,  # its own process group: the kill takes its local Ray with it
    )
    killed_trial = None
    try:
        # Trials run one at a time. First a trial's own process dies once its Train run has a checkpoint (a
        # lost node): Tune restarts the trial (sweep.max_failures, default 1) and its stage 1 resumes.
        deadline = time.time() + 900
        while killed_trial is None and time.time() < deadline and proc.poll() is None:
            runs = _stage1_runs(storage)
            if len(runs) == 1 and _registered(storage / runs[0][0]):
                killed_trial = _kill_trial_process(proc.pid)
            time.sleep(0.2)
        assert killed_trial is not None, (tmp_path / "first.log").read_text()[-3000:]
        # Once the second trial's Train run has written checkpoints, the first trial has finished. Kill the
        # driver then.
        while time.time() < deadline and proc.poll() is None:
            runs = _stage1_runs(storage)
            # two on disk: the first is registered (a checkpoint is on disk before Ray registers it)
            if len(runs) == 2 and len(runs[1][1]) >= 2:
                break
            time.sleep(0.5)
        assert proc.poll() is None, (
            "the sweep ended before it could be interrupted:\n" + (tmp_path / "first.log").read_text()[-3000:]
        )
        before = _stage1_runs(storage)
        assert len(before) == 2, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:  # it ended on its own (the assertion above says how)
            pass
        proc.wait()
        log.close()
    (first_run, first_ckpts), (second_run, _) = before
    first_done, second = first_run.removeprefix("resume-stage1-"), second_run.removeprefix("resume-stage1-")

    try:
        report = main(args)  # the same command again
    finally:
        ray.shutdown()
    assert report["sweep"]["restored"] is True
    trials = {t["trial_id"]: t for t in report["trials"]}
    assert set(trials) == {first_done, second}  # no new trials: the interrupted ones went on
    assert all(t["status"] == "completed" for t in trials.values())
    # The first trial, restarted by Tune after its process died, resumed its stage 1 from its checkpoint (a
    # step > 0); the finished trial was not run again after the driver's death; the interrupted one resumed
    # stage 1 from its last checkpoint (steps of at least one epoch kept), rather than from step 0.
    assert trials[first_done]["final_resumed_from_step"] >= 7
    assert trials[second]["final_resumed_from_step"] >= 7
    assert dict(_stage1_runs(storage))[first_run] == first_ckpts  # no new checkpoint: not trained again
    run_dir = tmp_path / "resume"
    for name in ("results.csv", "results.md", "best.yaml", "sweep_efficiency.png", "report.json"):
        assert (run_dir / name).stat().st_size > 0, name


def slot_stand_in(config, slots, marks):
    """A trial that holds its sweep slot the way the real one does (`slot_of`), writes which trials held slots
    when it got its own, then waits for a `go` file before it reports."""
    from ray import tune

    from system.runtime.trial_slots import slot_of

    trial_id = tune.get_context().get_trial_id()
    with slot_of(slots, trial_id):
        held = ray.get(ray.get_actor(slots).held.remote())
        Path(marks, f"{trial_id}.{os.getpid()}.start").write_text(json.dumps(held))
        while not Path(marks, "go").exists():
            time.sleep(0.1)
        tune.report({"score": config["x"]})


def _slot_sweep(storage: Path, marks: Path, restore: bool):
    """The sweep's shape as run_sweep builds it: slots started fresh by the driver, a 0.01-CPU trial holding
    its slot, FreeSlots among the callbacks, Tune's own limit above the slots' (as on a restore, where Tune
    starts every unfinished trial at once)."""
    from ray import tune

    from system.runtime.trial_slots import FreeSlots, slots_name, start_slots

    exp = str(storage / "slots")
    slots = start_slots(exp, 2)
    trainable = tune.with_resources(
        tune.with_parameters(slot_stand_in, slots=slots_name(exp), marks=str(marks)), {"cpu": 0.01}
    )
    if restore:
        tuner = tune.Tuner.restore(exp, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space={"x": tune.grid_search([1, 2, 3])},
            tune_config=tune.TuneConfig(max_concurrent_trials=3),
            run_config=tune.RunConfig(
                name="slots", storage_path=str(storage), verbose=0, callbacks=[FreeSlots(exp)]
            ),
        )
    return slots, tuner.fit()


_FIRST_DRIVER = """
import sys
sys.path[:0] = [{root!r}, {here!r}]
import ray
import test_sweep_e2e as t
ray.cloudpickle.register_pickle_by_value(t)
ray.init(num_cpus=2, include_dashboard=False)
t._slot_sweep(t.Path({storage!r}), t.Path({marks!r}), restore=False)
"""


@pytest.mark.timeout(300)
def test_restored_sweep_with_several_unfinished_trials_keeps_its_concurrency(tmp_path):
    """Three trials, two slots: the driver dies while two hold slots and the third waits. The restored sweep
    starts all three unfinished trials at once; they still run at most two at a time, and all complete."""
    storage, marks = tmp_path / "ray", tmp_path / "marks"
    marks.mkdir()
    script = _FIRST_DRIVER.format(
        root=str(ROOT), here=str(Path(__file__).parent), storage=str(storage), marks=str(marks)
    )
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        deadline = time.time() + 180
        while len(list(marks.glob("*.start"))) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.2)
        time.sleep(2.0)  # room for a wrong third start to show
        first = {p.name.split(".")[0]: json.loads(p.read_text()) for p in marks.glob("*.start")}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
    assert len(first) == 2, (tmp_path / "first.log").read_text()[-3000:]
    assert all(len(held) <= 2 for held in first.values())

    for p in marks.glob("*.start"):
        p.unlink()
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    started_before_go: list[int] = []

    def go_when_two_hold():
        # the restored trials wait for `go` while holding their slots: two must get one, the third wait
        end = time.time() + 180
        while len(list(marks.glob("*.start"))) < 2 and time.time() < end:
            time.sleep(0.2)
        time.sleep(2.0)
        started_before_go.append(len(list(marks.glob("*.start"))))
        (marks / "go").touch()

    ray.init(num_cpus=2, include_dashboard=False)
    go = threading.Thread(target=go_when_two_hold, daemon=True)
    go.start()
    try:
        slots, grid = _slot_sweep(storage, marks, restore=True)
        left = ray.get(slots.held.remote())
    finally:
        ray.shutdown()
        go.join(timeout=5)
    assert started_before_go == [2]  # Tune started all three unfinished trials; the slots let two run
    assert sorted(r.metrics["score"] for r in grid) == [1, 2, 3] and not grid.errors
    restarted = {p.name.split(".")[0]: json.loads(p.read_text()) for p in marks.glob("*.start")}
    assert set(first) < set(restarted) and len(restarted) == 3  # the interrupted two ran again, and the third
    assert all(len(held) <= 2 for held in restarted.values())
    assert left == []  # every slot given back
