"""`python -m pipelines.run` refuses a bad config before anything starts: no Ray (this test is not marked
`integration`, so conftest makes ray.init raise) and no run directory. The whole pipeline on a real two-node
Ray is tests/e2e/test_submit_ray_head.py."""

import pytest
import ray


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.zero_stage=7", r"train\.zero_stage: must be <= 3"),
        ("sweep.space=tune_spaces/missing.yaml", r"search space file not found"),
        ("eval.report_split=holdout", r"holdout"),
    ],
)
def test_bad_config_is_refused_before_ray_starts(tiny_dataset, tmp_path, override, message, argv):
    from pipelines.run import main

    sets = {"data.root": tiny_dataset, "run.output_dir": tmp_path, "run.name": "e2e"}
    with pytest.raises(ValueError, match=message):
        main(argv(sets, "--set", override))
    assert not ray.is_initialized()
    assert not (tmp_path / "e2e").exists()
