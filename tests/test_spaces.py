"""Search spaces are validated against the config schema before anything starts."""

from pathlib import Path

import pytest

from system.config import ConfigError
from system.spaces import grid_size, load_space

ROOT = Path(__file__).resolve().parents[1]


def test_shipped_spaces_load():
    for path in (ROOT / "tune_spaces").glob("*.yaml"):
        assert load_space(path)


def test_demo_space():
    space = load_space(ROOT / "tune_spaces" / "demo.yaml")
    assert space == {"loss.proto_temperature": ("grid", [0.05, 0.2])}
    assert grid_size(space) == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("loss.proto_temp: {grid: [0.1]}", r"loss\.proto_temp: not a config key"),
        (
            "loss.proto_temperature: {grid: [0.1, 0]}",
            r"value 0 refused: loss\.proto_temperature: must be > 0",
        ),
        ("optim.lr: {loguniform: [0, 1]}", r"loguniform needs low > 0"),
        ("optim.lr: {uniform: [0.1, 0.01]}", r"low < high"),
        ("optim.lr: {normal: [0, 1]}", r"unknown distribution 'normal'"),
        ("train.epochs: {choice: [2, 2.5]}", r"expected an integer"),
    ],
)
def test_bad_spaces_refused(tmp_path, text, message):
    p = tmp_path / "space.yaml"
    p.write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_space(p)
