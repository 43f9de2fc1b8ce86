"""Ablation statistics and variant definitions (no Ray)."""

import math

import numpy as np
import pytest

from system.config import Config, config_from_dict
from system.experiments import ablation as ab


def test_mean_std_uses_sample_std_and_skips_none():
    m, s, n = ab.mean_std([1.0, None, 3.0])
    assert (m, n) == (2.0, 2)
    assert s == pytest.approx(math.sqrt(2.0))  # ddof=1: ((1-2)^2 + (3-2)^2) / 1
    assert ab.mean_std([5.0]) == (5.0, 0.0, 1)
    assert ab.mean_std([None]) == (None, None, 0)


def test_compare_marks_differences_inside_the_noise():
    runs = {
        "a": [{"overall": 50.0, "many": 80.0, "medium": 50.0, "few": 10.0}] * 3,
        "b": [
            {"overall": 51.0, "many": 80.0, "medium": 50.0, "few": v} for v in (20.0, 22.0, 24.0)
        ],  # few: mean 22, std 2
    }
    summary = ab.summarise(runs)
    assert summary["b"]["few"] == {"mean": 22.0, "std": 2.0, "n": 3}
    one_image = {"overall": 2.0, "many": 0.5, "medium": 0.5, "few": 0.5}
    (row,) = ab.compare(summary, [("b", "a")], one_image)
    # few: +12, se = sqrt(4/3 + 0) = 1.155 -> floor 2.31: real. overall: +1 < one image (2.0): noise.
    assert row["few"]["diff"] == pytest.approx(12.0)
    assert row["few"]["noise"] == pytest.approx(2 * math.sqrt(4 / 3))
    assert row["few"]["real"] is True
    assert row["overall"]["real"] is False and row["overall"]["noise"] == 2.0
    assert row["many"]["diff"] == 0.0 and row["many"]["real"] is False
    md = ab.markdown(summary, [row], "test")
    assert "22.0 ± 2.0" in md and "+12.0 |" in md and "+1.0 (noise)" in md


def test_one_image_points_per_group():
    # 3 classes: many (200 train), medium (50), few (5); test: 10, 10, 4 images.
    labels = np.array([0] * 10 + [1] * 10 + [2] * 4)
    pts = ab.one_image_points(labels, [200, 50, 5], many=100, few=20)
    assert pts["overall"] == pytest.approx(100 / 24)
    assert pts["many"] == pytest.approx(10.0) and pts["few"] == pytest.approx(25.0)


def test_every_arm_is_a_valid_config_and_the_ladder_adds_one_thing_at_a_time():
    base = Config().to_dict()
    for name, arm in ab.ARMS.items():
        cfg = config_from_dict(base, arm.overrides)  # raises naming the key if an override is wrong
        if name == "baseline":
            assert cfg.loss.ce_weight > 0 and cfg.loss.contrastive_weight == 0 and cfg.loss.proto_weight == 0
        else:
            assert cfg.loss.ce_weight == 0
    c, p, t = (
        config_from_dict(base, ab.ARMS[a].overrides) for a in ("contrastive", "prototypes", "text_filter")
    )
    assert c.loss.proto_weight == 0 and p.loss.proto_weight > 0
    assert p.data.filter_threshold < -1e8 and not p.data.attribute_prompts
    assert t.data.filter_threshold == Config().data.filter_threshold and t.data.attribute_prompts
    assert ab.VARIANTS["full"].arm == "text_filter" and ab.VARIANTS["full"].classifier == "blend"
    assert ab.VARIANTS["text_filter"].classifier == "head"
    assert ab.VARIANTS["no_text"].classifier == ab.VARIANTS["full"].classifier


def test_text_free_arms_zero_every_text_derived_weight(tmp_path):
    """A user config with distillation: the text-free arms drop it too (the teacher's logits are image-text)."""
    (tmp_path / "t.pt").write_bytes(b"")
    base = config_from_dict(
        {}, {"model.pretrained": str(tmp_path / "t.pt"), "loss.distill_weight": 0.5}
    ).to_dict()
    for name in ("baseline", "no_text"):
        cfg = config_from_dict(base, ab.ARMS[name].overrides)
        assert cfg.loss.distill_weight == 0 and cfg.loss.contrastive_weight == 0, name
        assert cfg.loss.proto_weight == 0 or cfg.loss.proto_modalities == "image", name
    kept = config_from_dict(base, ab.ARMS["text_filter"].overrides)
    assert kept.loss.distill_weight == 0.5  # the text arms keep the user's distillation


def test_plot_writes_a_png(tmp_path):
    summary = ab.summarise({"a": [{"overall": 50.0, "many": 80.0, "medium": None, "few": 10.0}]})
    ab.plot(tmp_path / "a.png", summary, "t")
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
