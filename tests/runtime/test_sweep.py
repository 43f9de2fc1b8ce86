"""Sweep planning and outputs, on hand-made records: concurrency from resources, the restore fingerprint, the
lambda candidates, the efficiency figures, the results table and best.yaml."""

import csv
import json
import math

import numpy as np
import pytest
import yaml

from system.config import Config, ConfigError, config_from_dict, load_config
from system.method.finetune import BranchLogits, lambda_candidates, select_lambda
from system.reports import sweep as sr
from system.runtime.sweep import (
    max_concurrent_trials,
    sweep_changes,
    sweep_fingerprint,
    sweep_identity,
    trial_resources,
)


def _cfg(**over):
    return config_from_dict({}, over)


def test_trial_resources_and_concurrency():
    cfg = _cfg(
        **{
            "train.num_workers": 2,
            "train.cpus_per_worker": 1.0,
            "data.filter_actors": 2,
            "data.filter_actor_cpus": 0.25,
        }
    )
    assert trial_resources(cfg) == {"CPU": 3.5}  # 2 workers + 1 decode + 2 filter actors at 0.25
    assert max_concurrent_trials(cfg, {"CPU": 4.0}) == 1
    assert max_concurrent_trials(cfg, {"CPU": 7.0}) == 2
    assert max_concurrent_trials(cfg, {"CPU": 2.0}) == 1  # never 0: one trial always runs
    gpu = _cfg(**{"train.use_gpu": True, "train.num_workers": 4})
    assert trial_resources(gpu)["GPU"] == 4.0
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 8.0}) == 2  # GPUs bind before CPUs
    fixed = _cfg(**{"sweep.max_concurrent": 3})
    assert max_concurrent_trials(fixed, {"CPU": 1.0}) == 3


def test_concurrency_counts_what_the_autoscaler_may_add():
    gpu = _cfg(**{"train.use_gpu": True, "train.num_workers": 4})  # 4 GPUs and 5.25 CPUs a trial
    # An autoscaling cluster that starts as a CPU-only head and may add 2 nodes of 8 GPUs and 32 CPUs:
    # 16 GPUs / 4 = 4 trials, 64 CPUs / 5.25 = 12: the GPUs bind.
    head_only = {"CPU": 8.0}
    assert max_concurrent_trials(gpu, head_only) == 1
    assert max_concurrent_trials(gpu, head_only, {"CPU": 64.0, "GPU": 16.0}) == 4
    # The limits never lower what is already up, and an autoscaler without limits stays bounded.
    assert max_concurrent_trials(gpu, {"CPU": 64.0, "GPU": 16.0}, {"CPU": 8.0}) == 4
    assert max_concurrent_trials(gpu, head_only, {"CPU": 2.0**62, "GPU": 2.0**62}) == 256
    # sweep.max_concurrent still wins
    fixed = _cfg(**{"train.use_gpu": True, "sweep.max_concurrent": 2})
    assert max_concurrent_trials(fixed, head_only, {"CPU": 64.0, "GPU": 16.0}) == 2


def test_fingerprint_changes_with_what_trials_depend_on():
    space = {"loss.proto_temperature": ("grid", [0.05, 0.2])}
    base = sweep_fingerprint(_cfg(), space)
    assert base == sweep_fingerprint(_cfg(), dict(space))
    # where Ray runs and how many trials run at once do not change results ...
    assert base == sweep_fingerprint(
        _cfg(**{"ray.num_cpus": 8, "sweep.max_concurrent": 2, "sweep.max_failures": 3}), space
    )
    # ... the config and the space do
    assert base != sweep_fingerprint(_cfg(**{"train.epochs": 3}), space)
    assert base != sweep_fingerprint(_cfg(), {"loss.proto_temperature": ("grid", [0.05, 0.1])})


def test_lambda_candidates():
    assert lambda_candidates(5).tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert lambda_candidates(5, fixed=0.3).tolist() == [0.3]
    assert lambda_candidates(3, spec=("uniform", [0.2, 0.6])).tolist() == pytest.approx([0.2, 0.4, 0.6])
    assert lambda_candidates(3, spec=("choice", [0.9, 0.1, 0.9])).tolist() == [0.1, 0.9]


def test_select_lambda_only_among_candidates():
    # 2 samples, 2 classes. Head says class 0 for both, prototypes say class 1 for both; labels [1, 1].
    # Any lambda > 0.5 is right on both samples, lambda < 0.5 wrong on both.
    val = BranchLogits(
        head=np.array([[1.0, 0.0], [1.0, 0.0]], np.float32),
        proto=np.array([[0.0, 1.0], [0.0, 1.0]], np.float32),
        labels=np.array([1, 1]),
    )
    lam, acc, grid, curve = select_lambda(val, 11)
    assert (lam, acc) == (pytest.approx(0.6), 100.0)  # ties go to the smallest lambda above 0.5
    assert len(grid) == 11 and curve[0] == 0.0 and curve[-1] == 100.0
    lam, acc, grid, _ = select_lambda(val, 11, np.array([0.2, 0.3]))
    assert (lam, acc) == (pytest.approx(0.2), 0.0)  # only the candidates may be chosen, even if all lose
    assert 0.3 in grid and len(grid) == 11  # the plotted curve still covers [0, 1]
    lam, _, grid, _ = select_lambda(val, 11, np.array([0.75]))
    assert lam == 0.75 and 0.75 in grid  # an off-grid candidate is evaluated exactly


def _records():
    return [
        {
            "trial_id": "a",
            "status": "completed",
            "params": {"loss.proto_temperature": 0.05},
            "iterations": 4,
            "time_s": 100.0,
            "val_score": 90.0,
            "val_top1": 90.0,
            "best_lambda": 0.7,
            "last_epoch": 3,
        },
        {
            "trial_id": "b",
            "status": "completed",
            "params": {"loss.proto_temperature": 0.2},
            "iterations": 4,
            "time_s": 120.0,
            "val_score": 92.0,
            "val_top1": 92.0,
            "best_lambda": 0.5,
            "last_epoch": 3,
        },
        {
            "trial_id": "c",
            "status": "stopped",
            "params": {"loss.proto_temperature": 0.5},
            "iterations": 1,
            "time_s": 30.0,
            "val_score": 40.0,
            "last_epoch": 1,
        },
        {
            "trial_id": "d",
            "status": "error",
            "params": {"loss.proto_temperature": 1.0},
            "iterations": 0,
            "time_s": 5.0,
            "error": "Traceback\nRuntimeError: worker died",
        },
    ]


def test_efficiency_hand_computed():
    e = sr.efficiency(_records(), wall_s=200.0)
    assert e["trial_time_sum_s"] == 255.0
    assert e["parallelism"] == pytest.approx(255.0 / 200.0)
    assert (e["trials"], e["completed"], e["stopped_early"], e["errored"]) == (4, 2, 1, 1)
    # the stopped trial would have run the completed trials' median (110 s); it ran 30 s
    assert e["saved_trial_s"] == pytest.approx(80.0)
    assert e["saved_fraction"] == pytest.approx(80.0 / 335.0)
    none_done = sr.efficiency([r for r in _records() if r["status"] != "completed"], wall_s=40.0)
    assert none_done["saved_trial_s"] is None and "n/a" in sr.efficiency_markdown(none_done)


def test_results_table_csv_and_markdown(tmp_path):
    recs = _records()
    sr.write_results_csv(tmp_path / "results.csv", recs)
    rows = list(csv.DictReader(open(tmp_path / "results.csv")))
    assert [r["trial_id"] for r in rows] == ["a", "b", "c", "d"]
    assert rows[1]["loss.proto_temperature"] == "0.2" and rows[1]["val_top1"] == "92.0"
    assert rows[2]["status"] == "stopped" and rows[2]["val_top1"] == ""
    md = sr.results_markdown(recs).splitlines()
    assert md[0].startswith("| trial | status | loss.proto_temperature |")
    # best completed trial first, stopped and failed last
    assert [line.split("|")[1].strip() for line in md[2:]] == ["b", "a", "c", "d"]
    assert "(40.0 probe)" in md[4] and "RuntimeError: worker died" in md[5]


def test_plots_written(tmp_path):
    space = {"loss.proto_temperature": ("loguniform", [0.01, 1.0])}
    names = sr.plot_metric_vs_params(tmp_path, _records(), space)
    assert names == ["sweep_loss_proto_temperature.png"]
    sr.plot_efficiency(tmp_path / "eff.png", sr.efficiency(_records(), 200.0))
    for n in (*names, "eff.png"):
        assert (tmp_path / n).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_best_config_reloads_as_a_single_trial(tmp_path):
    base = Config().to_dict()
    out = sr.best_config(base, {"loss.proto_temperature": 0.2, "optim.lr": 1e-3}, 0.65, "demo-best")
    sr.write_best_yaml(tmp_path / "best.yaml", out)
    assert (tmp_path / "best.yaml").read_text().startswith("# The sweep's chosen trial")
    cfg = load_config(tmp_path / "best.yaml")
    assert cfg.loss.proto_temperature == 0.2 and cfg.optim.lr == 1e-3
    assert cfg.finetune.blend_weight == 0.65 and cfg.sweep.space is None and cfg.run.name == "demo-best"
    assert yaml.safe_load((tmp_path / "best.yaml").read_text())["finetune"]["blend_weight"] == 0.65
    with pytest.raises(ConfigError, match="loss.proto_temperature"):
        sr.best_config(base, {"loss.proto_temperature": -1.0}, 0.5, "x")


def test_sweep_config_rules():
    with pytest.raises(ConfigError, match=r"eval\.stage1_val_samples: sweep\.scheduler=asha"):
        _cfg(**{"sweep.scheduler": "asha", "eval.stage1_val_samples": 0})
    with pytest.raises(ConfigError, match=r"eval\.stage1_val_samples: sweep\.search=optuna"):
        _cfg(**{"sweep.search": "optuna", "eval.stage1_val_samples": 0})
    with pytest.raises(ConfigError, match=r"sweep\.asha_grace_epochs: must be <= the run.s 3 reports"):
        _cfg(**{"sweep.scheduler": "asha", "sweep.asha_grace_epochs": 9, "train.epochs": 3})
    with pytest.raises(ConfigError, match=r"sweep\.asha_reduction_factor: must be > 1"):
        _cfg(**{"sweep.asha_reduction_factor": 1.0})
    with pytest.raises(ConfigError, match=r"finetune\.blend_weight: must be <= 1"):
        _cfg(**{"finetune.blend_weight": 1.5})
    assert math.isclose(_cfg(**{"finetune.blend_weight": 1}).finetune.blend_weight, 1.0)


def test_optuna_search_is_seeded():
    from system.runtime.sweep import METRIC, search_algorithm, tune_param_space

    space = tune_param_space(
        {"loss.proto_temperature": ("loguniform", [0.02, 0.5]), "optim.lr": ("uniform", [1e-4, 1e-2])}
    )

    def first_suggestions(seed):
        alg = search_algorithm(_cfg(**{"sweep.search": "optuna", "run.seed": seed}), max_concurrent=4)
        assert alg.set_search_properties(METRIC, "max", space)
        return [alg.suggest(f"t{i}") for i in range(3)]

    a, b, c = first_suggestions(0), first_suggestions(0), first_suggestions(1)
    assert a == b and a != c
    assert all(0.02 <= s["loss.proto_temperature"] <= 0.5 for s in a)


def test_sweep_changes_name_each_key_and_ignore_keys_added_at_their_default():
    space = {"loss.proto_temperature": ("grid", [0.05, 0.2])}
    cfg = _cfg()
    record = {"fingerprint": sweep_fingerprint(cfg, space), "identity": sweep_identity(cfg, space)}
    assert sweep_changes(record, cfg, space) == []
    # the record's hash is the hash of its identity (a record without one still compares)
    assert sweep_changes({"fingerprint": record["fingerprint"]}, cfg, space) == []
    assert sweep_changes({"fingerprint": "0" * 16}, cfg, space) != []
    # a changed value and a changed space are each named
    changes = sweep_changes(record, _cfg(**{"train.epochs": 3}), {"loss.proto_temperature": ("grid", [0.1])})
    assert any(c.startswith("the space:") for c in changes)
    assert "train.epochs: 6 -> 3" in changes  # 6: the default
    # a key the record lacks (added to uniproto after the sweep started) counts only off its default
    older = json.loads(json.dumps(record))
    del older["identity"]["config"]["train"]["trace_rows_dir"]
    assert sweep_changes(older, cfg, space) == []
    assert sweep_changes(older, _cfg(**{"train.trace_rows_dir": "/tmp/rows"}), space) == [
        "train.trace_rows_dir: '<absent>' -> '/tmp/rows'"
    ]
    # the feature pass's pool size is placement: a sweep resumes on a cluster of another size
    assert sweep_changes(record, _cfg(**{"finetune.feature_actors_max": 3}), space) == []
    assert sweep_changes(older, _cfg(**{"finetune.feature_actors_max": 3}), space) == []
