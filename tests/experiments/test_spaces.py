"""Search spaces are validated against the config schema before anything starts."""

from pathlib import Path

import pytest

from system.config import ConfigError
from system.experiments.spaces import grid_size, load_space

ROOT = Path(__file__).resolve().parents[2]


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


def test_optuna_refuses_grid_but_not_for_evaluate_only_keys(tmp_path):
    from system.config import config_from_dict

    optuna = config_from_dict({}, {"sweep.search": "optuna"})
    p = tmp_path / "s.yaml"
    p.write_text("loss.proto_temperature: {grid: [0.05, 0.2]}\n")
    with pytest.raises(ConfigError, match=r"loss\.proto_temperature: sweep\.search=optuna .* use choice"):
        load_space(p, optuna)
    p.write_text("loss.proto_temperature: {choice: [0.05, 0.2]}\nfinetune.blend_weight: {grid: [0.2, 0.8]}\n")
    assert set(load_space(p, optuna)) == {"loss.proto_temperature", "finetune.blend_weight"}


def test_blend_weight_is_evaluated_not_trained():
    from system.experiments.spaces import split_space

    space = load_space(ROOT / "tune_spaces" / "proto_blend.yaml")
    tuned, evaluated = split_space(space)
    assert tuned == {"loss.proto_temperature": ("grid", [0.05, 0.1, 0.2])}
    assert evaluated == {"finetune.blend_weight": ("uniform", [0.0, 1.0])}
    assert grid_size(space) == 3  # lambda adds no trials
    assert grid_size(load_space(ROOT / "tune_spaces" / "blend_weight.yaml")) == 1


def test_pretraining_space_covers_loss_weights_and_lr():
    space = load_space(ROOT / "tune_spaces" / "pretrain.yaml")
    assert {"loss.proto_weight", "loss.contrastive_weight", "optim.lr"} <= set(space)
    assert space["optim.lr"][0] == "loguniform"


def test_a_key_the_config_cannot_use_is_refused_unless_its_condition_is_searched_too(tmp_path):
    from system.config import config_from_dict
    from system.experiments.spaces import unused_keys

    p = tmp_path / "s.yaml"
    p.write_text("loss.proto_temperature: {grid: [0.05, 0.2]}\n")
    no_proto = config_from_dict({}, {"loss.proto_weight": 0.0})
    with pytest.raises(
        ConfigError, match=r"loss\.proto_temperature: has no effect with loss\.proto_weight = 0"
    ):
        load_space(p, no_proto)
    # tau_p is the cross-entropy baseline's temperature too
    ce = config_from_dict({}, {"loss.proto_weight": 0.0, "loss.ce_weight": 1.0})
    assert set(load_space(p, ce)) == {"loss.proto_temperature"}
    # searching the weight as well: some samples use tau_p
    p.write_text("loss.proto_temperature: {grid: [0.05, 0.2]}\nloss.proto_weight: {grid: [0.0, 1.0]}\n")
    assert set(load_space(p, no_proto)) == {"loss.proto_temperature", "loss.proto_weight"}
    only_tau = {"loss.proto_temperature": ("grid", [0.05, 0.2])}
    assert unused_keys(only_tau, no_proto) == {
        "loss.proto_temperature": "loss.proto_weight = 0 and loss.ce_weight = 0"
    }
    assert unused_keys(only_tau, config_from_dict({}, {})) == {}


def test_ablation_grid_skips_the_arm_that_cannot_use_it(tmp_path, capsys):
    from pipelines.ablate import arm_spaces
    from system.experiments.ablation import ARMS

    space = load_space(ROOT / "tune_spaces" / "ablate_temperature.yaml")
    assert space == {"loss.proto_temperature": ("grid", [0.05, 0.1, 0.2])}
    config = str(ROOT / "pipelines" / "configs" / "ablate.yaml")
    spaces = arm_spaces(config, [], list(ARMS), space, tmp_path)
    assert spaces["contrastive"] == {}
    assert all(spaces[a] == space for a in ARMS if a != "contrastive")
    assert "arm contrastive: loss.proto_temperature not searched" in capsys.readouterr().out
    with pytest.raises(ConfigError, match=r"train\.epochs"):  # every arm's config is validated
        arm_spaces(config, ["train.epochs=0"], ["baseline"], space, tmp_path)
