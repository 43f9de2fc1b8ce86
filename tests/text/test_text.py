import pytest

from system.data.corpus import load_class_corpus, load_truth, read_vlltr_corpus, split_sentences
from system.data.demo_render import demo_classes
from system.data.demo_text import write_corpus
from system.text.filter import (
    ATTRIBUTE_PROMPT,
    PROMPT_TEMPLATES,
    SCORERS,
    LexicalScorer,
    RelevanceScorer,
    TextFilterResult,
    attribute_phrases,
    build_text_pools,
    filter_corpus,
    filter_quality,
    is_relevant_caption,
    make_scorer,
    register_scorer,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("One. Two! Three?", ["One.", "Two!", "Three?"]),
        ("Birds, e.g. finches, sing. They fly.", ["Birds, e.g. finches, sing.", "They fly."]),
        ("Ask Dr. Smith about it. He knows.", ["Ask Dr. Smith about it.", "He knows."]),
        ("It is 3.5 cm long. It weighs 2.25 g.", ["It is 3.5 cm long.", "It weighs 2.25 g."]),
        ("Too   many    spaces.   Next one.", ["Too many spaces.", "Next one."]),
        ("A wrapped\nsentence ends here. New one.", ["A wrapped sentence ends here.", "New one."]),
        ("First paragraph\n\nSecond paragraph.", ["First paragraph", "Second paragraph."]),
        (
            "Described by J. R. Forster in 1781. See No. 5 below.",
            ["Described by J. R. Forster in 1781.", "See No. 5 below."],
        ),
        ('He said "stop." Then left.', ['He said "stop."', "Then left."]),
        ("Visit www.example.com today. Thanks.", ["Visit www.example.com today.", "Thanks."]),
        ("Found in the U.S. and Canada.", ["Found in the U.S. and Canada."]),
        ("", []),
    ],
)
def test_split_sentences(text, expected):
    assert split_sentences(text) == expected


VLLTR = """Lead sentence about the red bird. It has a short bill.
== Description ==
The wings are black with white bars.
=== Plumage ===
Males are brighter than females.
== See also ==
* Cardinal (bird)
== References ==
1. ^ Smith, J. (2004). Birds. Retrieved 3 May 2021.
=== Citations ===
2. ^ A nested citation line.
== Habitat ==
It lives in dense forest.
== External Links ==
* Official website.
"""


def test_vlltr_reader_drops_headers_and_reference_sections(tmp_path):
    path = tmp_path / "desc_0.txt"
    path.write_text(VLLTR)
    assert read_vlltr_corpus(path) == [
        "Lead sentence about the red bird.",
        "It has a short bill.",
        "The wings are black with white bars.",
        "Males are brighter than females.",
        "It lives in dense forest.",
    ]


def test_missing_class_files_are_reported_not_raised(tmp_path):
    (tmp_path / "desc_1.txt").write_text("== Description ==\nA blue ring.\n")
    missing: list[int] = []
    corpus = load_class_corpus(tmp_path, 3, missing=missing)
    assert corpus == {0: [], 1: ["A blue ring."], 2: []}
    assert missing == [0, 2]
    assert load_truth(tmp_path) == {}


NAMES = ["red striped star", "blue dotted ring"]


def test_lexical_scorer_separates_descriptions_from_boilerplate():
    scorer = LexicalScorer(NAMES)
    assert scorer.score("The red striped star has five sharp points.", 0) > 2
    assert scorer.score("Subscribe to our newsletter for weekly updates.", 0) < 0
    # Colour words and the class's own shape do not rescue junk.
    assert scorer.score("Shop the new red collection today, 20% off!", 0) < 0
    assert scorer.score("Rated 4.5 out of 5 stars by 300 shoppers.", 0) < 0
    assert scorer.score("It was a pleasant afternoon.", 0) < 0  # no evidence either way
    assert scorer.boilerplate_kinds("Retrieved 3 May 2021.") == ["wiki_meta", "date_or_citation"]
    assert is_relevant_caption(scorer, "a blue dotted ring on a cluttered background", 1, 0.0)
    assert not is_relevant_caption(scorer, "image 3 of 12", 1, 0.0)
    assert not is_relevant_caption(scorer, "   ", 1, 0.0)


def test_filter_keeps_templates_even_when_everything_is_dropped():
    corpus = {0: ["Accept all cookies.", "Back to top."], 1: []}
    result = filter_corpus(corpus, NAMES, LexicalScorer(NAMES))
    assert result.kept == {0: [], 1: []}
    assert result.dropped[0] == ["Accept all cookies.", "Back to top."]
    assert result.report() == [
        {"label": 0, "name": "red striped star", "kept": 0, "dropped": 2},
        {"label": 1, "name": "blue dotted ring", "kept": 0, "dropped": 0},
    ]
    pools = build_text_pools(result, NAMES)
    assert pools[0] == [t.format(name="red striped star") for t in PROMPT_TEMPLATES]
    assert pools[1][0] == "a photo of a blue dotted ring."


class _LengthScorer(RelevanceScorer):
    def score(self, sentence, label):
        return float(len(sentence))


def test_threshold_and_top_k_keep_the_best_in_corpus_order():
    corpus = {0: ["aaaa", "a", "aaaaaa", "aaa", "aaaa"], 1: ["bb"]}
    result = filter_corpus(corpus, NAMES, _LengthScorer(NAMES), threshold=2, top_k=2)
    assert result.kept[0] == ["aaaa", "aaaaaa"]  # duplicate "aaaa" counted once; ties go to the earlier one
    assert result.dropped[0] == ["a", "aaa"]
    assert result.kept[1] == ["bb"]
    assert filter_corpus(corpus, NAMES, _LengthScorer(NAMES), top_k=0).kept == {0: [], 1: []}
    with pytest.raises(ValueError, match="outside"):
        filter_corpus({5: ["x"]}, NAMES, _LengthScorer(NAMES))


def test_scorer_registry_is_open():
    assert SCORERS["lexical"] is LexicalScorer
    register_scorer("length-test")(_LengthScorer)
    assert make_scorer("length-test", NAMES).score("abc", 0) == 3.0
    with pytest.raises(ValueError, match="already registered"):
        register_scorer("lexical")(_LengthScorer)
    with pytest.raises(ValueError, match="unknown text scorer 'nope'"):
        make_scorer("nope", NAMES)


@pytest.mark.parametrize(
    ("sentence", "phrases"),
    [
        ("The wings have bright red edges.", ["bright red edges"]),
        ("It has thin stripes and five points.", ["thin stripes", "five points"]),
        ("A checkerboard of dark and light squares.", ["checkerboard", "dark and light squares"]),
        ("The bird is bright red.", ["bright red"]),
        ("Its light blue-green body has polka dots.", ["light blue-green body", "polka dots"]),
        ("It was found near the river.", []),
        ("Red stripes, red stripes and more red stripes.", ["red stripes"]),
    ],
)
def test_attribute_phrases(sentence, phrases):
    assert attribute_phrases(sentence) == phrases


def test_attribute_prompts_come_from_kept_sentences():
    result = TextFilterResult(
        kept={0: ["The star has five sharp points.", "It has five sharp points and thin stripes."], 1: []},
        dropped={0: [], 1: []},
        class_names=NAMES,
    )
    pool = build_text_pools(result, NAMES, max_attribute_prompts=2)[0]
    assert pool[len(PROMPT_TEMPLATES) : len(PROMPT_TEMPLATES) + 2] == result.kept[0]
    assert pool[-2:] == [
        ATTRIBUTE_PROMPT.format(name="red striped star", attribute="five sharp points"),
        ATTRIBUTE_PROMPT.format(name="red striped star", attribute="thin stripes"),
    ]
    assert len(build_text_pools(result, NAMES, attribute_prompts=False)[0]) == len(PROMPT_TEMPLATES) + 2


def test_filter_quality_counts():
    result = TextFilterResult(kept={0: ["good", "junk2"]}, dropped={0: ["junk", "good2", "unknown"]})
    truth = {(0, "good"): False, (0, "junk2"): True, (0, "junk"): True, (0, "good2"): False}
    quality = filter_quality(result, truth)
    assert quality["precision"] == 0.5 and quality["recall"] == 0.5
    assert (quality["true_drops"], quality["wrong_drops"], quality["missed_boilerplate"]) == (1, 1, 1)
    assert quality["kept_relevant"] == 1 and quality["unlabelled"] == 1
    assert filter_quality(TextFilterResult({}, {}), {})["precision"] is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_lexical_filter_quality_on_the_demo_corpus(tmp_path, seed):
    classes = demo_classes(24, seed)
    write_corpus(tmp_path, classes, seed)
    names = [c.name for c in classes]
    result = filter_corpus(load_class_corpus(tmp_path, 24), names, LexicalScorer(names))
    quality = filter_quality(result, load_truth(tmp_path))
    assert quality["unlabelled"] == 0 and quality["true_drops"] > 100
    assert quality["precision"] >= 0.95 and quality["recall"] >= 0.95
    assert all(row["kept"] >= 8 for row in result.report())
