"""The console script: usage, make-demo-data flags, and clean refusals (exit 2, the key or file named)."""

import json
from pathlib import Path

from pipelines.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_console_script_is_the_apps_cli():
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["uniproto"] == "pipelines.cli:main"


def test_usage_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for cmd in ("make-demo-data", "run", "sweep", "pretrain", "finetune"):
        assert cmd in out
    assert main(["--help"]) == 0


def test_make_demo_data_flags(tmp_path, capsys):
    out_dir = tmp_path / "d"
    args = ["make-demo-data", "--out", str(out_dir), "--classes", "4", "--imbalance", "10", "--n-max", "20"]
    assert (
        main(args + ["--val-per-class", "2", "--test-per-class", "3", "--image-size", "24", "--seed", "5"])
        == 0
    )
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # n_i = 20 * 10^(-i/3): 20, 9.28 -> 9, 4.31 -> 4, 2
    assert summary["splits"] == {"train": 20 + 9 + 4 + 2, "val": 8, "test": 12}
    manifest = json.loads((out_dir / "manifest.json").read_text())
    assert manifest["train_counts"] == [20, 9, 4, 2]


def test_config_and_dataset_errors_exit_2(tmp_path, capsys):
    assert main(["run", "--config", "pipelines/configs/demo.yaml", "--set", "optim.lr=-1"]) == 2
    assert "optim.lr: must be > 0" in capsys.readouterr().err
    assert (
        main(["run", "--config", "pipelines/configs/demo.yaml", "--set", f"data.root={tmp_path}/none"]) == 2
    )
    assert "manifest.json" in capsys.readouterr().err


def test_sweep_refuses_bad_space_and_samples_before_ray(tmp_path, capsys):
    import ray

    base = ["sweep", "--config", "pipelines/configs/demo.yaml", "--set", f"run.output_dir={tmp_path}"]
    assert main([*base, "--space", "tune_spaces/nope.yaml"]) == 2
    assert "search space file not found: tune_spaces/nope.yaml" in capsys.readouterr().err
    assert main([*base, "--samples", "0"]) == 2
    assert "sweep.num_samples: must be >= 1" in capsys.readouterr().err
    # optuna samples its space: a grid is refused, naming the space file and key
    assert main([*base, "--set", "sweep.search=optuna"]) == 2
    assert "tune_spaces/demo.yaml: loss.proto_temperature: sweep.search=optuna" in capsys.readouterr().err
    assert not ray.is_initialized() and not list(tmp_path.iterdir())


def test_prototypes_command_etf_and_optimised(tmp_path, capsys):
    import numpy as np

    out = tmp_path / "p.npy"
    assert main(["prototypes", "--num-classes", "10", "--dim", "16", "--out", str(out)]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["method"] == "simplex_etf"
    # Simplex ETF: every pairwise cosine is exactly -1/(K-1).
    assert abs(stats["max_cos"] + 1 / 9) < 1e-6 and abs(stats["min_cos"] + 1 / 9) < 1e-6
    p = np.load(out)
    assert p.shape == (10, 16) and np.allclose(np.linalg.norm(p, axis=1), 1.0, atol=1e-6)

    # K=6 in 3-D (d+1 < K <= 2d): built exactly as the octahedron (cross-polytope), whose max cosine is 0.
    assert main(["prototypes", "--num-classes", "6", "--dim", "3", "--steps", "600"]) == 0
    stats = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert stats["method"] == "orthoplex"
    assert abs(stats["max_cos"]) < 5e-3 and stats["seconds"] >= 0
