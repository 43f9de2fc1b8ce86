"""Sentence relevance scorers for irrelevant-text filtering, behind an open registry.

A scorer answers "how much does this sentence describe what class `label` looks like?" with a float; the filter
keeps sentences scoring at or above a threshold. The lexical scorer here needs no model and no images, so it is
the default and the baseline; embedding or retrieval scorers (docs/method.md) register themselves with
`@register_scorer("name")` (system.text.scorer_registry) from their own modules and override `score_many` to
batch their encoder calls.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from system.text.attributes import attribute_words, normalise
from system.text.scorer_registry import SCORERS, register_scorer

if TYPE_CHECKING:
    import numpy as np

    from system.config import Config


def make_scorer(name: str, class_names: list[str], **options: Any) -> RelevanceScorer:
    """Instantiate a registered scorer by name."""
    if name not in SCORERS:
        raise ValueError(f"unknown text scorer {name!r}; registered: {sorted(SCORERS)}")
    return SCORERS[name](class_names, **options)


def scorer_options(cfg: Config, name: str | None = None) -> dict[str, Any]:
    """The options scorer `name` (default: cfg.data.text_scorer) takes from a run config (paths, arch)."""
    name = name or cfg.data.text_scorer
    if name not in SCORERS:
        raise ValueError(f"unknown text scorer {name!r}; registered: {sorted(SCORERS)}")
    return SCORERS[name].options_from_config(cfg)


class RelevanceScorer:
    """Base class: subclasses take the class names first and implement `score` (or `score_many`)."""

    def __init__(self, class_names: list[str]) -> None:
        self.class_names = list(class_names)

    @classmethod
    def options_from_config(cls, cfg: Config) -> dict[str, Any]:
        """Keyword options for `make_scorer` taken from a run config; model-based scorers override this."""
        return {}

    def score(self, sentence: str, label: int) -> float:
        raise NotImplementedError

    def score_many(self, sentences: Sequence[str], label: int) -> list[float]:
        """Scores of many sentences of one class; model-based scorers override this to batch."""
        return [self.score(s, label) for s in sentences]


class BatchScorer(RelevanceScorer):
    """A scorer that embeds sentences in batches: subclasses implement `score_batch` (label already checked,
    at least one sentence); `score` is a batch of one."""

    def score_batch(self, sentences: list[str], label: int) -> np.ndarray:
        raise NotImplementedError

    def score(self, sentence: str, label: int) -> float:
        return self.score_many([sentence], label)[0]

    def score_many(self, sentences: Sequence[str], label: int) -> list[float]:
        if not 0 <= label < len(self.class_names):
            raise ValueError(f"label {label} out of range for {len(self.class_names)} classes")
        if not sentences:
            return []
        return [float(x) for x in self.score_batch(list(sentences), label)]


_MONTH = r"(?:jan(?:uary)?|feb(?:ruary)?|mar(?:ch)?|apr(?:il)?|may|june?|july?|aug(?:ust)?|sep(?:t(?:ember)?)?|oct(?:ober)?|nov(?:ember)?|dec(?:ember)?)"

# Web boilerplate, by kind. Written from what scraped pages and wiki dumps contain, not from any one generator:
# each pattern is a family of phrasings (calls to action, shop and legal text, navigation, wiki maintenance
# notes, dates and citations, links, social/media furniture).
BOILERPLATE_PATTERNS: dict[str, re.Pattern[str]] = {
    name: re.compile(pattern, re.IGNORECASE)
    for name, pattern in {
        "call_to_action": r"\b(?:buy|shop(?:ping)?|order (?:now|today|online)|place (?:an|your) order|"
        r"pre-?order|subscribe|unsubscribe|sign(?:-| )?(?:up|in|on)|log ?(?:in|out)|register (?:now|today|for)|"
        r"click|tap (?:here|to)|download|install|follow us|like us|share (?:this|on|with)|"
        r"add to (?:cart|basket|bag|wish ?list)|check ?out (?:our|the|now)|learn more|read more|find out|"
        r"see more|view (?:more|all|larger|details)|contact us|get (?:yours|started|it now|in touch)|"
        r"(?:don'?t|do not) miss|join (?:us|now|today|our|the)|book (?:now|today|online)|call (?:now|us)|"
        r"enquir\w*|inquir\w*|leave a (?:comment|reply|review)|let us know|opt (?:in|out)|"
        r"browse|hurry|act now|grab (?:yours|one)|claim your|reserve your|try (?:it )?(?:free|now)|visit (?:our|us))\b",
        "commerce": r"(?:[$€£¥]\s?\d|\b\d+(?:\.\d+)?\s?(?:usd|eur|gbp|dollars|euros)\b|\b\d+\s?% off\b|"
        r"\b(?:save|up to) \d+\s?%|\b(?:free|fast|express) (?:shipping|delivery|returns?|trial|gift)|"
        r"\b(?:discounts?|coupons?|promo(?:tion(?:al)?)?s?|vouchers?|rebates?|bargains?|clearance|"
        r"on sale|sale|deals?|special offers?|offers? (?:end|valid)|in stock|out of stock|sold out|"
        r"customers?|shoppers?|buyers?|prices?|priced|pricing|checkout|cart|gift cards?|shipping|"
        r"delivery|dispatch(?:ed)?|warranty|refunds?|returns policy|membership|members|subscription|"
        r"per month|a month|monthly plan|rated \d|out of \d stars|reviews?|bestsell\w*|best-sell\w*|"
        r"best price|guaranteed|merchandise|apparel|products?|items?|collection|catalogue|catalog|"
        r"retailers?|store|brand new|new arrivals?|limited (?:time|edition|stock)|exclusive)\b)",
        "legal": r"(?:©|\(c\) ?\d{4}|\b(?:cookies?|privacy|terms (?:of (?:use|service)|and conditions|apply)|"
        r"t&cs?|copyright(?:ed)?|all rights reserved|licen[cs]e[ds]?|trademarks?|registered trademark|"
        r"gdpr|consent|disclaimer|cc[- ]by(?:-sa)?|creative commons|policy|policies|affiliate|"
        r"legal notice|imprint|liability|permission of the publisher)\b)",
        "navigation": r"\b(?:jump to|skip to|navigation|main (?:menu|content|page)|home ?page|back to top|"
        r"go back|return to|previous (?:page|article|post|story|image)|next (?:page|article|post|story|image)|"
        r"site ?map|breadcrumbs?|search results?|search (?:this|our) site|page \d+ of \d+|image \d+ of \d+|"
        r"\d+ of \d+ (?:images|photos|pages|results)|menu|sidebar|footer|toggle|scroll (?:down|up)|"
        r"related (?:posts|articles|stories|products)|you may also like|more from|trending|"
        r"opening hours|office hours|top of (?:the )?page)\b",
        "wiki_meta": r"\b(?:this (?:article|page|section|list|entry|site|website|blog|post|stub)|"
        r"(?:additional |reliable )?citations?(?: needed)?|cite|unsourced|verification|verifiable|"
        r"last (?:edited|modified|updated)|retrieved|archived(?: from)?|accessed on|wikipedia|wikimedia|"
        r"wikidata|free encyclopedia|encyclopa?edia|disambiguation|other uses|redirects? here|stub|"
        r"expand(?:ing)? (?:it|this)|help (?:us )?improve|improve this|nominated|deletion|"
        r"edit (?:this|source)|talk page|original research|neutral point of view|cleanup|"
        r"may be challenged|see also|further reading|external links?|isbn|doi|issn|"
        r"et al|ibid|op\. cit|pp?\. \d+)\b",
        "date_or_citation": rf"(?:\b\d{{1,2}}(?:st|nd|rd|th)? {_MONTH}\.?,? \d{{4}}\b|\b{_MONTH}\.? \d{{1,2}}"
        r"(?:st|nd|rd|th)?,? \d{4}\b|\b(?:1[5-9]|20)\d{2}\b|\b\d{1,2}:\d{2}\b|\b\d{1,2} ?[ap]\.?m\b\.?|"
        r"\[\d+\]|\[citation needed\]|\^)",
        "link_or_contact": r"(?:https?://|\bwww\.|\b[\w-]+\.(?:com|org|net|io|co|uk|de|info|html?|php|aspx?)\b|"
        r"\b[\w.+-]+@[\w-]+\.\w+|(?:^|\s)[#@]\w+|\b(?:e-?mail(?: address)?|phone|tel\.?|fax|p\.?o\.? box|"
        r"address|postcode|zip code)\b)",
        "web_media": r"\b(?:newsletters?|inbox|notifications?|updates|facebook|twitter|instagram|pinterest|"
        r"youtube|tiktok|linkedin|whatsapp|reddit|app|apps|accounts?|passwords?|username|browsers?|"
        r"javascript|video|videos|player|advert\w*|ads?|sponsored|promoted|posted (?:by|in|on)|comments?|"
        r"blog|bloggers?|podcasts?|wordpress|powered by|admin|uncategori[sz]ed|website|web site|webpage|"
        r"online|users?|visitors?|readers?|subscribers?|followers?|posters?|stickers?|wallpapers?|"
        r"printables?|pdf|loading|thumbnails?|click to enlarge|enlarge|stock (?:photo|image)s?|"
        r"photo(?:graph)? (?:by|credit|courtesy)|image (?:by|credit|courtesy|source)|credits?|"
        r"img[_-]?\d+|dsc[_-]?\d+|\w+\.(?:jpe?g|png|gif|webp)|\d+ ?(?:x|×) ?\d+(?: ?px)?|px|"
        r"high resolution|hi-?res|royalty[- ]free|placeholder|no image available|untitled|"
        r"screenshot|gallery|slideshow|episode|podcast|season \d+|press release|press|"
        r"headquarters|head office|staff|team|editor(?:ial)?s?|author|written by|published by)\b",
    }.items()
}
# Dates and bare years also occur in real descriptions ("first described in 1758"): weaker evidence.
_PATTERN_WEIGHT = {"date_or_citation": 1.5}
_STOPWORDS = frozenset("a an the of and or in on with to for by at from is are its it this that".split())


@register_scorer("lexical")
class LexicalScorer(RelevanceScorer):
    """Keyword evidence: class-name tokens and attribute-lexicon words for, boilerplate patterns against.

    score = min(name hits, 3) * name_weight + min(attribute words, 4) * attribute_weight
            - sum over matched boilerplate kinds of boilerplate_weight (dates count 1.5) - prior.
    The prior makes a sentence with no evidence, or a single attribute word (many common words double as one:
    "point", "heart", "light"), score below 0: with nothing visual in it, it cannot help the encoder tell
    classes apart. One boilerplate kind outweighs a sentence full of attributes except
    when it names the class too; real junk ("Shop red star posters now!") usually trips two kinds.
    """

    def __init__(
        self,
        class_names: list[str],
        name_weight: float = 1.0,
        attribute_weight: float = 0.5,
        boilerplate_weight: float = 3.0,
        prior: float = 0.75,
    ) -> None:
        super().__init__(class_names)
        self.name_weight = name_weight
        self.attribute_weight = attribute_weight
        self.boilerplate_weight = boilerplate_weight
        self.prior = prior
        self._name_tokens = [
            {normalise(w) for w in re.findall(r"[a-z0-9]+", name.lower()) if w not in _STOPWORDS}
            for name in self.class_names
        ]

    def boilerplate_kinds(self, sentence: str) -> list[str]:
        """Names of the boilerplate pattern families that match `sentence` (for reports and debugging)."""
        return [kind for kind, pattern in BOILERPLATE_PATTERNS.items() if pattern.search(sentence)]

    def score(self, sentence: str, label: int) -> float:
        if not 0 <= label < len(self._name_tokens):
            raise ValueError(f"label {label} out of range for {len(self._name_tokens)} classes")
        words = {normalise(w) for w in re.findall(r"[a-z0-9]+", sentence.lower())}
        name_hits = len(words & self._name_tokens[label])
        attributes = len(attribute_words(sentence))
        penalty = sum(
            _PATTERN_WEIGHT.get(kind, self.boilerplate_weight) for kind in self.boilerplate_kinds(sentence)
        )
        return (
            min(name_hits, 3) * self.name_weight
            + min(attributes, 4) * self.attribute_weight
            - penalty
            - self.prior
        )
