"""The console script: usage, make-demo-data flags, and clean refusals (exit 2, the key or file named)."""

import json

from system.cli import main


def test_usage_lists_commands(capsys):
    assert main([]) == 2
    out = capsys.readouterr().out
    for cmd in ("make-demo-data", "run", "pretrain", "finetune"):
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
