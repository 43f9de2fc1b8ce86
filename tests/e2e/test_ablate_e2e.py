"""`uniproto ablate` on a real local Ray: the cross-entropy baseline trains for real (its own loss term on a
learnable head inside the DeepSpeed engine, the text tower unused; the read of the head alone), two seeds give a
mean, and running the same command again resumes instead of retraining. Which loss terms and settings every
arm gets is tests/experiments/test_ablation.py and tests/method/test_losses.py."""

import json

import pytest
import ray

pytestmark = pytest.mark.integration


def _sets(root, tmp_path):
    return {
        "data.root": root,
        "run.output_dir": tmp_path,
        "run.name": "abl",
        "data.image_size": 32,
        "train.epochs": 1,
        "train.steps": "null",
        "train.micro_batch_size": 16,
        "finetune.epochs": 5,
        "finetune.lambda_points": 11,
        "eval.stage1_val_samples": 24,
        "ray.no_progress_timeout_s": 120,
    }


@pytest.mark.timeout(1500)
def test_ablate_baseline_two_seeds_then_resume(tiny_dataset, tmp_path, capsys, argv):
    from pipelines.ablate import main as ablate

    arms = ("--arms", "baseline", "--seeds", "0,1")

    try:
        report = ablate(argv(_sets(tiny_dataset, tmp_path), *arms))
        printed = capsys.readouterr().out
        last = json.loads(printed.strip().splitlines()[-1])
        again = ablate(
            argv(_sets(tiny_dataset, tmp_path), *arms)
        )  # same run: every seed is restored, none retrained
    finally:
        ray.shutdown()
    assert set(last) == {"baseline"}
    assert "Configuration for experiment" not in printed  # Tune's header box only under --verbose
    for name, groups in last.items():
        assert set(groups) == {"overall", "many", "medium", "few"}
        assert groups == {g: report["summary"][name][g]["mean"] for g in groups}
        assert all(0.0 <= v <= 100.0 for v in groups.values())
    # The arm trained with its own objective only.
    base_runs = report["runs"]["baseline"]
    assert [r["seed"] for r in base_runs] == [0, 1]
    assert all(set(r["stage1_losses"]) == {"ce_loss"} for r in base_runs)
    assert all(r["lambda"] == 0.0 for r in base_runs)  # the baseline reads the head alone
    # Two different seeds: the mean is their mean.
    overall = [r["overall"] for r in base_runs]
    assert report["summary"]["baseline"]["overall"]["mean"] == pytest.approx(sum(overall) / 2)
    assert again["summary"] == report["summary"] and again["seconds"] < report["seconds"]
    root = tmp_path / "abl"
    assert json.loads((root / "ablation.json").read_text())["summary"] == report["summary"]
    assert (root / "ablation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| `baseline` |" in (root / "ablation.md").read_text()
    assert (root / "baseline" / "config.yaml").is_file()
