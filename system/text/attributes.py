"""Visual attribute lexicon and attribute-phrase extraction (the "attribute enhancement" side of text filtering).

A lexicon plus a tiny modifier-noun grammar instead of a POS tagger: it needs no model download, is
deterministic, and is good enough to pull phrases such as "bright red edges", "thin stripes" or "five points" out
of description sentences. Nouns cover both the demo's geometric classes and natural categories (birds, plants,
scenes), so the same code serves real long-tailed corpora.
"""

from __future__ import annotations

import re

COLOURS = frozenset(
    """
    red green blue yellow orange purple violet pink cyan magenta teal turquoise brown black white grey gray
    crimson scarlet maroon burgundy vermilion ruby rose salmon coral peach amber tangerine gold golden lemon
    mustard ochre olive lime emerald jade mint navy indigo azure cobalt sapphire sky aqua lavender lilac plum
    mauve beige tan cream ivory silver bronze copper rust chestnut chocolate ebony charcoal slate sandy
    reddish greenish bluish yellowish orangish purplish pinkish brownish blackish whitish greyish grayish
    rufous buff chestnut iridescent multicoloured multicolored colourless colorless
    """.split()
)
COLOUR_MODIFIERS = frozenset(
    "bright dark pale light deep vivid dull faint rich soft muted intense royal".split()
)
SIZES = frozenset(
    """
    small large tiny big huge giant medium compact miniature massive long short tall wide narrow thin thick
    broad slender stout elongated oversized
    """.split()
)
NUMBERS = frozenset("one two three four five six seven eight nine ten eleven twelve several many few".split())
# Adjectives for shape, pattern, texture and edges.
SHAPE_ADJECTIVES = frozenset(
    """
    round circular oval square rectangular triangular hexagonal octagonal pentagonal diamond star-shaped
    plus-shaped cross-shaped pointed sharp blunt curved straight slanted hollow angular symmetrical
    symmetric equal crisp rounded notched forked jagged serrated tapered tapering crossing concentric
    """.split()
)
PATTERN_ADJECTIVES = frozenset(
    """
    solid plain uniform striped stripy banded barred dotted spotted speckled polka mottled checkered
    chequered checked patterned marbled streaked streaky plaid tiled alternating parallel regular irregular
    """.split()
)
TEXTURE_ADJECTIVES = frozenset(
    """
    smooth rough glossy shiny matte dull furry hairy feathered scaly spiny bumpy grainy velvety waxy woolly
    fluffy leathery transparent translucent opaque metallic textured even flat
    """.split()
)
MODIFIERS = COLOUR_MODIFIERS | SIZES | NUMBERS | SHAPE_ADJECTIVES | PATTERN_ADJECTIVES | TEXTURE_ADJECTIVES

SHAPE_NOUNS = frozenset(
    """
    circle square triangle star cross hexagon pentagon octagon diamond rhombus ring oval ellipse rectangle
    polygon disc disk crescent heart spiral cone cube sphere
    """.split()
)
PATTERN_NOUNS = frozenset(
    "stripe band bar dot spot speck checkerboard chequerboard checker grid pattern marking patch streak".split()
)
PART_NOUNS = frozenset(
    """
    edge corner point side tip arm border rim centre center hole notch outline silhouette contour profile face
    surface fill interior
    body wing tail beak bill head leg eye crest throat breast belly neck fin scale feather plumage
    fur coat petal leaf stem trunk bark branch flower fruit seed shell horn antler ear mane stalk
    """.split()
)
TEXTURE_NOUNS = frozenset("texture colour color colouring coloring coloration tint hue shade sheen".split())
HABITAT_NOUNS = frozenset(
    """
    background forest woodland grassland meadow desert water river lake sea ocean reef wetland marsh shore
    beach mountain field garden savanna tundra jungle cave
    """.split()
)
SIZE_UNITS = frozenset("cm mm centimetres centimeters millimetres millimeters inches metres meters".split())
NOUNS = SHAPE_NOUNS | PATTERN_NOUNS | PART_NOUNS | TEXTURE_NOUNS | HABITAT_NOUNS

ATTRIBUTE_WORDS = MODIFIERS | COLOURS | NOUNS | SIZE_UNITS
# Words that describe nothing visual on their own; they only count inside a phrase.
_WEAK = (
    NUMBERS | COLOUR_MODIFIERS | frozenset("equal even flat regular parallel alternating crossing".split())
)

# A measurement ("3.5 cm", "12 in") describes size even though no single word in it is an attribute word.
_MEASUREMENT = re.compile(r"\b\d+(?:\.\d+)?\s?(?:mm|cm|m|km|in|inches|ft|feet|metres|meters|centimetres)\b")
_WORD = re.compile(r"[A-Za-z]+(?:[-'][A-Za-z]+)*|\d+(?:\.\d+)?")
# Nouns that read naturally without an article in "which has {attribute}".
_MASS_NOUNS = frozenset("fur plumage colouring coloring coloration water".split())
_QUANTIFIERS = frozenset("few many several".split())
_NEGATIONS = frozenset("no not never without nor lacks lacking".split())


def singular(word: str) -> str:
    """Cheap singular form for lexicon look-ups ("stripes" -> "stripe", "patches" -> "patch")."""
    for suffix, repl in (
        ("ies", "y"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("xes", "x"),
        ("sses", "ss"),
        ("s", ""),
    ):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + repl
    return word


def normalise(word: str) -> str:
    """Lower-case lexicon form of one word: known words as they are, else their singular form."""
    word = word.lower()
    if word in ATTRIBUTE_WORDS:
        return word
    return singular(word)


def attribute_words(sentence: str) -> set[str]:
    """Distinct lexicon words in `sentence` (hyphenated words are also looked at part by part)."""
    found: set[str] = set()
    for token in _WORD.findall(sentence):
        for part in {token, *token.split("-")}:
            word = normalise(part)
            if word in ATTRIBUTE_WORDS and word not in _WEAK:
                found.add(word)
    found.update(m.group(0) for m in _MEASUREMENT.finditer(sentence))
    return found


def _kind(token: str) -> str:
    word = normalise(token)
    if word in NOUNS and (word not in MODIFIERS or word != token.lower()):
        return "noun"  # plural "squares" is a noun; singular "square" depends on what follows
    if token[0].isdigit() or word in MODIFIERS or word in COLOURS:
        return "mod"
    parts = token.lower().split("-")
    if len(parts) > 1 and all(normalise(p) in ATTRIBUTE_WORDS for p in parts):
        return "mod"  # "blue-green", "plus-shaped"
    return "other"


def _is_descriptive(words: list[str]) -> bool:
    """A modifier-only phrase is worth keeping when it names a colour, pattern or texture ("bright red")."""
    return any(
        normalise(w) in COLOURS | PATTERN_ADJECTIVES | TEXTURE_ADJECTIVES or "-" in w for w in words
    ) and not all(normalise(w) in _WEAK for w in words)


def _standalone_pattern(token: str) -> bool:
    """A pattern noun counts alone when plural or unambiguous ("stripes", "checkerboard", not the verb "spot")."""
    word = normalise(token)
    return word in PATTERN_NOUNS and (
        word != token.lower() or word in {"checkerboard", "chequerboard", "grid"}
    )


_PHRASE_ENDERS = frozenset("and or with in on at to from but all above below overall when except".split())


def _ends_phrase(sentence: str, matches: list[re.Match[str]], j: int) -> bool:
    """A modifier-only run is an attribute only if nothing it could modify follows: punctuation, the end, or a
    function word ("is bright red.", "red with"), not an unknown noun ("faint grey scribbles")."""
    if j >= len(matches):
        return True
    gap = sentence[matches[j - 1].end() : matches[j].start()]
    return bool(gap.strip()) or matches[j].group(0).lower() in _PHRASE_ENDERS


def attribute_phrases(sentence: str) -> list[str]:
    """Attribute phrases in `sentence`, lower-case, de-duplicated, in order of appearance.

    Grammar: a run of modifiers (colours, sizes, numbers, shape/pattern/texture adjectives; "and" may join
    them) followed by up to two lexicon nouns ("five sharp points", "dark and light squares", "red star shape");
    a modifier run with no noun when it names a colour/pattern/texture ("bright red"); a pattern noun alone
    ("stripes"). Phrases contained in a longer phrase of the same sentence are dropped.
    """
    matches = list(_WORD.finditer(sentence))
    tokens = [m.group(0) for m in matches]
    kinds = [_kind(t) for t in tokens]
    # Words that are both ("square", "diamond"): a modifier before a noun ("square corners"), else a noun.
    for k in range(len(tokens) - 1, -1, -1):
        if kinds[k] == "mod" and normalise(tokens[k]) in NOUNS:
            kinds[k] = "mod" if k + 1 < len(tokens) and kinds[k + 1] == "noun" else "noun"
    phrases: list[str] = []
    i = 0
    while i < len(tokens):
        if kinds[i] == "other":
            i += 1
            continue
        mods: list[str] = []
        j = i
        while j < len(tokens):
            if kinds[j] == "mod":
                mods.append(tokens[j])
            elif tokens[j].lower() == "and" and mods and j + 1 < len(tokens) and kinds[j + 1] == "mod":
                mods.append("and")
            else:
                break
            j += 1
        nouns: list[str] = []
        while j < len(tokens) and kinds[j] == "noun" and len(nouns) < 2:
            nouns.append(tokens[j])
            j += 1
        while mods and (mods[0].lower() in _QUANTIFIERS or mods[0] == "and"):
            mods.pop(0)  # "few faint grey" -> "faint grey": quantifiers are not attributes
        negated = any(
            t.lower() in _NEGATIONS for t in tokens[max(0, i - 3) : i]
        )  # "no markings", "never grey"
        if negated:
            pass
        elif nouns and (mods or _standalone_pattern(nouns[-1])):
            phrases.append(" ".join(mods + nouns))
        elif not nouns and _ends_phrase(sentence, matches, j):
            # "small and purple" -> "purple": a modifier-only phrase keeps its descriptive runs.
            for run in " ".join(mods).split(" and "):
                if run and _is_descriptive(run.split()):
                    phrases.append(run)
        i = max(j, i + 1)
    unique = list(dict.fromkeys(p.lower() for p in phrases))
    return [p for p in unique if not any(p != q and f" {p} " in f" {q} " for q in unique)]


def head_noun(phrase: str) -> str | None:
    """The phrase's final lexicon noun (singular form), or None for a modifier-only phrase."""
    last = phrase.split()[-1]
    word = normalise(last)
    return word if word in NOUNS else None


def attribute_clause(phrase: str) -> str:
    """Make a phrase read as the object of "which has ...": add an article or a noun where English needs one."""
    head = head_noun(phrase)
    words = phrase.split()
    if head is None:
        if any(normalise(w) in PATTERN_ADJECTIVES for w in words):
            return f"a {phrase} pattern"
        if any(normalise(w) in TEXTURE_ADJECTIVES for w in words):
            return f"a {phrase} texture"
        return f"{phrase} colouring"
    plural = normalise(words[-1]) != words[-1].lower() or words[0] in NUMBERS - {"one"} or words[0].isdigit()
    if plural or head in _MASS_NOUNS:
        return phrase
    article = "an" if phrase[0] in "aeiou" else "a"
    return f"{article} {phrase}"
