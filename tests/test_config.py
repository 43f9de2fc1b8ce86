"""Config loading, overrides and refusal: every bad value is refused with its dotted key, before Ray starts."""

from pathlib import Path

import pytest
import yaml

from system.config import (
    Config,
    ConfigError,
    config_from_dict,
    is_config_key,
    load_config,
    parse_override,
    save_config,
)

DEMO = Path(__file__).resolve().parents[1] / "pipelines" / "configs" / "demo.yaml"


def test_demo_config_loads_with_types():
    cfg = load_config(DEMO)
    assert isinstance(cfg, Config)
    assert cfg.run.name == "demo"
    assert cfg.train.num_workers == 2
    assert cfg.optim.lr == pytest.approx(2e-3) and isinstance(cfg.optim.lr, float)
    assert cfg.sweep.space == "tune_spaces/demo.yaml"


@pytest.mark.parametrize("path", sorted(DEMO.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_loads_and_round_trips(path, tmp_path):
    """Each of pipelines/configs/*.yaml (a new one too) loads, and its resolved form loads back equal."""
    cfg = load_config(path)
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg


def test_overrides_are_typed_by_yaml():
    cfg = load_config(
        DEMO,
        [
            "train.epochs=3",
            "train.steps=null",
            "loss.proto_temperature=0.05",
            "model.pretrained=null",
            "data.attribute_prompts=false",
        ],
    )
    assert cfg.train.epochs == 3
    assert cfg.loss.proto_temperature == 0.05
    assert cfg.model.pretrained is None
    assert cfg.data.attribute_prompts is False


@pytest.mark.parametrize("name", ["../../x", "a/b", ".hidden", "", "x" * 64, "a b"])
def test_run_name_is_one_path_component_for_every_entry_point(name):
    with pytest.raises(ConfigError, match=r"run\.name: .* must be 1-63 characters"):
        load_config(None, {"run.name": name})


def test_gpu_numerics_defaults_and_what_one_worker_allows():
    cfg = Config()
    assert cfg.loss.local_loss and cfg.loss.gather_with_grad  # exact and memory-lean by default
    assert load_config(DEMO, ["train.precision=bf16"]).train.precision == "bf16"  # CPU autocast: allowed
    # one worker has nobody to gather from: the flag changes nothing, so it is not refused
    assert not load_config(DEMO, ["loss.gather_with_grad=false", "train.num_workers=1"]).loss.gather_with_grad


def test_int_widens_to_float_but_not_the_reverse():
    assert config_from_dict({"optim": {"lr": 1}}).optim.lr == 1.0
    with pytest.raises(ConfigError, match=r"train\.epochs: expected an integer"):
        config_from_dict({"train": {"epochs": 2.5}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.epoch=3"], r"unknown config key train\.epoch"),
        (["trian.epochs=3"], r"unknown config key trian"),
        (["train.epochs=three"], r"train\.epochs: expected an integer"),
        (["data.attribute_prompts=1"], r"data\.attribute_prompts: expected true/false"),
        (["train.zero_stage=4"], r"train\.zero_stage: must be <= 3"),
        (["loss.proto_temperature=0"], r"loss\.proto_temperature: must be > 0"),
        (["data.caption_prob=1.5"], r"data\.caption_prob: must be <= 1"),
        (["data.resample=inverse"], r"data\.resample: must be one of"),
        (["train.precision=fp16"], r"train\.precision: must be one of"),
        (["eval.report_split=val"], r"eval\.select_split: must differ"),
        (["loss.distill_weight=0.5"], r"loss\.distill_weight: distillation needs a teacher"),
        (["data.text_scorer=magic"], r"data\.text_scorer: unknown scorer"),
        (["eval.few_threshold=200"], r"eval\.few_threshold: must be <= eval\.many_threshold"),
        (["train=3"], r"train: expected a mapping"),
        (["optim.lr=.nan"], r"optim\.lr: must be a finite number"),
        (["loss.distill_weight=1.5"], r"loss\.distill_weight: must be <= 1"),
        (["optim.grad_clip=.inf"], r"optim\.grad_clip: must be a finite number"),
        (["loss.gather_with_grad=false"], r"loss\.gather_with_grad: false gives an inexact gradient"),
        (
            ["train.compile=true", "train.zero_stage=3"],
            r"train\.compile: not supported with train\.zero_stage=3",
        ),
        (["train.compile_backend=tvm"], r"train\.compile_backend: must be one of"),
        (["train.zero3_persistence_threshold=-1"], r"train\.zero3_persistence_threshold: must be >= 0"),
    ],
)
def test_refusals_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(DEMO, overrides)


def test_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  lr: [1, 2]\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: optim\.lr: expected a number"):
        load_config(bad)


def test_hostile_yaml_is_refused_by_name_before_anything_expands(tmp_path):
    import time

    bomb = tmp_path / "bomb.yaml"  # ten levels of ten aliases: 10**10 leaves if it were expanded
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 10)]
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    with pytest.raises(ConfigError, match=r"bomb\.yaml: YAML aliases \(\*name\) are not accepted \(line 2\)"):
        load_config(bomb)
    assert time.perf_counter() - t0 < 1.0
    dup = tmp_path / "dup.yaml"
    dup.write_text("train:\n  epochs: 3\n  epochs: 30\n")
    with pytest.raises(ConfigError, match=r"dup\.yaml: duplicate key 'epochs' \(line 3\)"):
        load_config(dup)
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"run:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match=r"latin\.yaml: not UTF-8 text \(byte 16\)"):
        load_config(latin)
    with pytest.raises(ConfigError, match=r"--set run\.name: cannot parse value .*aliases"):
        load_config(None, ["run.name=&a [*a]"])
    space = tmp_path / "space.yaml"
    space.write_text("loss.proto_temperature: {grid: [0.1]}\nloss.proto_temperature: {grid: [0.2]}\n")
    from system.experiments.spaces import load_space

    with pytest.raises(ConfigError, match=r"space\.yaml: duplicate key 'loss\.proto_temperature'"):
        load_space(space)


def test_bad_override_syntax():
    with pytest.raises(ConfigError, match="expected KEY=VALUE"):
        parse_override("train.epochs")
    with pytest.raises(ConfigError, match="bad key"):
        parse_override("train..epochs=3")


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(DEMO, ["train.epochs=5", "train.steps=null"])
    save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["train"]["epochs"] == 5
    assert load_config(tmp_path / "config.yaml") == cfg


def test_is_config_key():
    assert is_config_key("loss.proto_temperature")
    assert not is_config_key("loss")
    assert not is_config_key("loss.nope")
    assert not is_config_key("loss.proto_temperature.x")


def test_worker_env_from_set_and_secret_names_refused():
    cfg = load_config(
        None,
        [
            "train.worker_env.NCCL_SOCKET_IFNAME=eth0",
            'train.worker_env.OMP_NUM_THREADS="2"',
            "train.worker_env.TOKENIZERS_PARALLELISM=false_",  # a TOKEN word inside a longer word: no secret
        ],
    )
    assert cfg.train.worker_env == {
        "NCCL_SOCKET_IFNAME": "eth0",
        "OMP_NUM_THREADS": "2",
        "TOKENIZERS_PARALLELISM": "false_",
    }
    with pytest.raises(ConfigError, match=r"train\.worker_env\.OMP_NUM_THREADS: must be a string"):
        load_config(None, ["train.worker_env.OMP_NUM_THREADS=2"])
    for name in ("LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH", "PATH"):
        with pytest.raises(ConfigError, match=rf"train\.worker_env\.{name}: not settable from a config"):
            load_config(None, [f"train.worker_env.{name}=/tmp/x"])
    for name in ("AWS_SECRET_ACCESS_KEY", "HF_TOKEN", "WANDB_API_KEY"):
        with pytest.raises(ConfigError, match=rf"train\.worker_env\.{name}: looks like a secret"):
            load_config(None, [f"train.worker_env.{name}=x"])


def test_the_text_filter_pool_autoscales_between_its_bounds():
    from system.runtime.data import filter_pool

    fixed = filter_pool(load_config(None, ["data.filter_actors=2"]))
    assert (fixed.min_size, fixed.max_size) == (2, 2)
    grows = filter_pool(load_config(None, ["data.filter_actors=2", "data.filter_actors_max=6"]))
    assert (grows.min_size, grows.max_size) == (2, 6)
    with pytest.raises(
        ConfigError, match=r"data\.filter_actors: must be <= data\.filter_actors_max \(1\), got 2"
    ):
        load_config(None, ["data.filter_actors=2", "data.filter_actors_max=1"])
