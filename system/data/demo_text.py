"""Text side of the demo dataset: VL-LTR-style class descriptions with web boilerplate, and image captions.

Descriptions mix attribute-bearing sentences with the junk that real scraped corpora carry (cookie notices,
shop adverts, wiki maintenance notes), in the same sections, so a filter has something to do; a truth file
records which sentence is which. The boilerplate pools below were written as a sample of real web text, not
from the scorer's patterns, and some mention colours, numbers or the class itself so keyword rules are tested.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from system.data.corpus import read_vlltr_corpus
from system.data.demo_render import COLOURS, DemoClass

_MONTHS = "January February March April May June July August September October November December".split()
_PEOPLE = ["J. Smith", "Dr. Alvarez", "M. K. Osei", "L. Chen", "Prof. Novak", "R. Haddad"]

SHAPE_PARTS = {
    "circle": ["a perfectly round outline", "no corners at all", "a smooth curved edge"],
    "square": ["four equal sides", "four right-angled corners", "straight edges of equal length"],
    "triangle": ["three straight sides", "three sharp corners", "a pointed tip at the top"],
    "star": ["five sharp points", "five pointed arms", "deep notches between its points"],
    "cross": ["two crossing bars", "four equal arms", "a thick plus-shaped outline"],
    "hexagon": ["six equal sides", "six blunt corners", "a honeycomb-like edge"],
    "diamond": ["four slanted sides", "two sharp points at either end", "a narrow rhombus outline"],
    "ring": ["a hollow centre", "a thick round band", "an empty hole in the middle"],
}
PATTERN_PARTS = {
    "solid": ["a single uniform fill", "no markings at all", "a plain, even surface"],
    "striped": ["parallel dark stripes", "evenly spaced dark bands", "bold stripes across the body"],
    "dotted": ["a grid of small dark dots", "regularly spaced dark spots", "neat polka dots"],
    "checkered": ["a checkerboard of dark and light squares", "a chequered grid", "alternating dark squares"],
}
PATTERN_NOUN = {"solid": "solid colours", "striped": "stripes", "dotted": "dots", "checkered": "squares"}
COLOUR_WORDS = {
    "red": ["red", "bright red", "crimson"],
    "orange": ["orange", "bright orange", "tangerine"],
    "yellow": ["yellow", "lemon yellow", "golden yellow"],
    "green": ["green", "grass green", "emerald green"],
    "cyan": ["cyan", "turquoise", "light blue-green"],
    "blue": ["blue", "deep blue", "royal blue"],
    "purple": ["purple", "violet", "deep purple"],
}
SIZE_WORDS = {"small": ["small", "compact", "fairly small"], "large": ["large", "big", "fairly large"]}
PLURAL = {"cross": "crosses", "circle": "circles"}

# Attribute-bearing description sentences. Fields: name, shape, shapes, colour, colour_word, pattern,
# pattern_part, pattern_noun, shape_part, size, cm.
DESCRIPTION_TEMPLATES = [
    "The {name} is a {size} {shape} whose surface is {colour_word}.",
    "Its body is {colour_word}, decorated with {pattern_part}.",
    "A typical {shape} of this kind has {shape_part}.",
    "Seen from the front, the {name} shows {shape_part} and {pattern_part}.",
    "The fill colour is {colour_word}, which makes it easy to spot against a pale background.",
    "Most examples are {size} and {colour}, with {pattern_part}.",
    "The {pattern} texture covers the whole {shape}.",
    "Even when it is rotated, the outline keeps {shape_part}.",
    "Its silhouette shows {shape_part}.",
    "The {colour} colour is the most reliable field mark of the {name}.",
    "Young examples look similar but have a paler {colour} tint.",
    "The {name} is often confused with other {shapes}, but its {pattern} pattern sets it apart.",
    "It measures about {cm} cm across, which makes it {size} for its group.",
    "The interior of the shape is filled with {pattern_part}.",
    "Observers describe the {name} as {colour_word} all over, with {pattern_part}.",
    "Its colouring ranges from {colour_word} to a slightly darker {colour}.",
    "The {shape} has a crisp, well-defined border with {shape_part}.",
    "It usually sits on a light, cluttered background with a few faint grey scribbles nearby.",
    "The {colour} surface contrasts strongly with the darker {pattern_noun}.",
    "Compared with related forms, the {name} is {size}, e.g. it fills much of the view.",
    "A {size} {shape} with {shape_part}, it is one of the more distinctive {colour} forms.",
    "Under strong light the {colour_word} {pattern_noun} look almost black at the edges.",
    "Its {pattern_noun} stay clearly visible even at a distance of 3.5 m.",
    "The shape is {colour_word} all over and is never found in grey.",
]

# Web boilerplate seen mixed into scraped descriptions. Fields: n, m, price, pct, date, year, colour, name,
# shape, person.
BOILERPLATE_POOL = [
    "This website uses cookies to improve your experience.",
    "By continuing to browse the site you are agreeing to our use of cookies.",
    "Subscribe to our newsletter and never miss an update.",
    "This article needs additional citations for verification.",
    "Please help improve this article by adding citations to reliable sources.",
    "Unsourced material may be challenged and removed.",
    "All rights reserved.",
    "Retrieved {date}.",
    "Free shipping on orders over {price}.",
    "Skip to main content.",
    "Click here to download the full-resolution poster.",
    "Our {colour} velvet range is now {pct}% off for members.",
    "Sign in to your account to see your saved items.",
    "Prices start at just {price} per month.",
    "Follow us on Instagram and Twitter for daily inspiration.",
    "This page was last edited on {date}, at 1{n}:{m}5.",
    "Text is available under the Creative Commons Attribution-ShareAlike License; additional terms may apply.",
    "Orders placed before 2 p.m. ship the same day.",
    "Customers who viewed this item also viewed the {colour} edition.",
    "Rated 4.{n} out of 5 stars by {n}{m}0 shoppers.",
    "Read our privacy policy to learn how we handle your data.",
    "Advertisement.",
    "Share this page on Facebook.",
    "For press enquiries, contact {person} at our head office.",
    "Terms and conditions apply, e.g. one voucher per household.",
    "Leave a comment below and let us know what you think.",
    "Posted by admin in Uncategorized.",
    "Download our free app for exclusive offers.",
    "The Black Friday sale ends at midnight.",
    "Only {n} left in stock in {colour}.",
    "Your browser does not support the video tag.",
    "Enter your email address to receive notifications of new posts.",
    "Powered by WordPress.",
    "Page {n} of 1{m}.",
    "Accept all cookies or manage your preferences.",
    "From Wikipedia, the free encyclopedia.",
    "For other uses, see the disambiguation page.",
    "Use code SPRING{pct} at checkout to save {pct}%.",
    "Gift cards are available in any amount from $10 to $500.",
    "Back to top.",
    "Copyright © {year} Acme Media Inc. All rights reserved.",
    "{name} stickers and posters are on sale now in our shop.",
    "Browse hundreds of {shape} earrings from independent makers!",
    "This section is a stub; you can help by expanding it.",
    "Our team of {n} editors reviews every submission within two working days.",
    "Sponsored content from our partners appears below.",
    "Contact us at hello@example.com for wholesale pricing.",
    "Visit www.shape-world.example for more information.",
    "Sign up today and get your first month free!",
    "Report a problem with this page.",
    "Tap the heart icon to save this pin.",
    "Photo credit: {person} / Getty Images.",
    "The video could not be loaded because of a network error.",
]

CAPTION_TEMPLATES = [
    "{a_colour} {pattern} {shape} on a cluttered background",
    "photo of {a_name}",
    "a {size} {colour} {shape} with a {pattern} fill",
    "{a_colour} {shape} covered in {pattern_part}",
    "{name} among a few grey scribbles",
    "{colour} {shape}, {pattern_part}",
    "close-up of a {size} {name}",
    "the {shape} is {colour} and {pattern}",
    "{a_name} on a pale background",
    "{colour_word} {shape} with {pattern_part}",
    "{name}",
]
CAPTION_BOILERPLATE = [
    "image {n} of 1{m}",
    "Buy now and save {pct}%",
    "IMG_{n}{m}{m}{n}.JPG",
    "DSC0{m}{n}{m}{n}",
    "click to enlarge",
    "stock photo #{n}{m}{n}{m}{m}",
    "thumbnail",
    "untitled-{n}{m}",
    "photo by {person}, CC BY-SA 4.0",
    "view larger image",
    "free shipping on all orders",
    "product photo {n}",
    "sponsored",
    "loading...",
    "no image available",
    "© {year} all rights reserved",
    "best price guaranteed",
    "{n}00 x {m}00 px",
    "download in high resolution",
    "new arrivals",
    "see more photos",
    "{colour} hot deals this week",
    "share on pinterest",
    "screenshot {date}",
]


def _fill_fields(cls: DemoClass, rng: np.random.Generator) -> dict[str, str]:
    def pick(options: list[str]) -> str:
        return options[int(rng.integers(len(options)))]

    # Boilerplate colours are the class's own colour half the time: a filter cannot just key on colour words.
    other = pick(list(COLOURS) + ["black", "white", "silver"])
    return {
        "name": cls.name,
        "shape": cls.shape,
        "shapes": PLURAL.get(cls.shape, cls.shape + "s"),
        "colour": cls.colour,
        "a_colour": ("an " if cls.colour[0] in "aeiou" else "a ") + cls.colour,
        "a_name": ("an " if cls.name[0] in "aeiou" else "a ") + cls.name,
        "colour_word": pick(COLOUR_WORDS[cls.colour]),
        "pattern": cls.pattern,
        "pattern_part": pick(PATTERN_PARTS[cls.pattern]),
        "pattern_noun": PATTERN_NOUN[cls.pattern],
        "shape_part": pick(SHAPE_PARTS[cls.shape]),
        "size": pick(SIZE_WORDS[cls.size]),
        "cm": str(int(rng.integers(3, 9)) if cls.size == "small" else int(rng.integers(9, 15))),
        "n": str(int(rng.integers(1, 10))),
        "m": str(int(rng.integers(0, 10))),
        "pct": str(int(rng.choice([10, 15, 20, 25, 30, 40, 50]))),
        "price": f"${int(rng.integers(2, 60))}.{int(rng.integers(0, 100)):02d}",
        "year": str(int(rng.integers(2009, 2024))),
        "date": f"{int(rng.integers(1, 29))} {pick(_MONTHS)} {int(rng.integers(2009, 2024))}",
        "person": pick(_PEOPLE),
        "colour_other": other,
    }


def _capitalise(text: str) -> str:
    return text[0].upper() + text[1:]


def _fill(template: str, fields: dict[str, str], rng: np.random.Generator) -> str:
    values = dict(fields)
    if rng.random() < 0.5:
        values["colour"] = fields["colour_other"]
    return template.format(**values)


def description_sentences(cls: DemoClass, rng: np.random.Generator) -> list[tuple[str, bool]]:
    """(sentence, is_boilerplate) pairs for one class, in reading order: 8-12 relevant, 4-8 boilerplate."""
    fields = _fill_fields(cls, rng)
    n_relevant = int(rng.integers(8, 13))
    n_junk = int(rng.integers(4, 9))
    relevant = [
        _capitalise(DESCRIPTION_TEMPLATES[i].format(**fields))
        for i in rng.choice(len(DESCRIPTION_TEMPLATES), n_relevant, replace=False)
    ]
    junk = []
    for i in rng.choice(len(BOILERPLATE_POOL), n_junk, replace=False):
        junk.append(_capitalise(_fill(BOILERPLATE_POOL[i], _fill_fields(cls, rng), rng)))
    flags = np.array([False] * n_relevant + [True] * n_junk)
    order = rng.permutation(len(flags))
    pool = relevant + junk
    return [(pool[i], bool(flags[i])) for i in order]


def _reference_sections(cls: DemoClass, rng: np.random.Generator) -> list[str]:
    year = int(rng.integers(1950, 2022))
    person = _PEOPLE[int(rng.integers(len(_PEOPLE)))]
    lines = [
        "== References ==",
        f'1. ^ {person} ({year}). "The {cls.shape} and its relatives". Journal of Plane Figures. 12 (3): 45-67.',
        "2. ^ Atlas of Shapes, vol. 2. Retrieved 3 May 2021.",
        f"* {cls.name.title()} at the Shape Database.",
        "== External links ==",
        f"* Official {cls.colour} {cls.shape} society website.",
        "* Media related to shapes at Wikimedia Commons.",
    ]
    if rng.random() < 0.5:
        lines[0:0] = ["== See also ==", f"* {cls.shape.title()} (geometry)", "* List of patterned figures"]
    if rng.random() < 0.3:
        lines += ["== Notes ==", "=== Sources ===", f"a. The {cls.name} was first listed in {year}."]
    return lines


def description_file(cls: DemoClass, rng: np.random.Generator) -> tuple[str, list[tuple[str, bool]]]:
    """Text of `desc_<label>.txt` and the (sentence, is_boilerplate) pairs a reader must get back from it."""
    sentences = description_sentences(cls, rng)
    # A lead paragraph before any header, then two body sections; paragraphs of 1-4 sentences per line.
    cut1 = int(rng.integers(1, 4))
    cut2 = cut1 + (len(sentences) - cut1) // 2
    lines: list[str] = []
    for header, part in (
        (None, sentences[:cut1]),
        ("Description", sentences[cut1:cut2]),
        ("Appearance", sentences[cut2:]),
    ):
        if header:
            lines.append(f"== {header} ==")
        i = 0
        while i < len(part):
            take = int(rng.integers(1, 5))
            lines.append(" ".join(s for s, _ in part[i : i + take]))
            i += take
    lines += _reference_sections(cls, rng)
    return "\n".join(lines) + "\n", sentences


def write_corpus(text_dir: str | Path, classes: list[DemoClass], seed: int) -> int:
    """Write `desc_<label>.txt` for every class and `truth.jsonl`; returns the number of truth rows.

    The truth rows are checked against what `read_vlltr_corpus` returns for each file, so truth and reader can
    never drift apart silently.
    """
    text_dir = Path(text_dir)
    text_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for cls in classes:
        rng = np.random.default_rng([seed, 3, cls.label])
        text, expected = description_file(cls, rng)
        path = text_dir / f"desc_{cls.label}.txt"
        path.write_text(text, encoding="utf-8")
        got = read_vlltr_corpus(path)
        if got != [s for s, _ in expected]:
            raise RuntimeError(f"corpus reader disagrees with the generator on {path}: {got} != {expected}")
        rows += [{"label": cls.label, "sentence": s, "boilerplate": b} for s, b in expected]
    with (text_dir / "truth.jsonl").open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    return len(rows)


def caption(cls: DemoClass, rng: np.random.Generator) -> tuple[str, bool]:
    """An image caption: 75% alt-text describing the class, 25% boilerplate web text; and is_boilerplate."""
    fields = _fill_fields(cls, rng)
    if rng.random() < 0.25:
        template = CAPTION_BOILERPLATE[int(rng.integers(len(CAPTION_BOILERPLATE)))]
        return _fill(template, fields, rng), True
    template = CAPTION_TEMPLATES[int(rng.integers(len(CAPTION_TEMPLATES)))]
    return template.format(**fields), False
