"""The relevance scorers by name: configs select one by name (data.text_scorer), `make_scorer` builds it.

It imports nothing of ours, so the config can check a scorer's name without importing the scorers: the config
sits below them (their `options_from_config` reads it). Importing it loads the `system.text` package, which
registers the built-in scorers (`lexical`, `minilm`, `clip_text`, `retrieval`); others register themselves with
`@register_scorer("name")` from their own modules.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T", bound=type)

SCORERS: dict[str, type] = {}  # name -> RelevanceScorer subclass (system.text.scorers)


def register_scorer(name: str) -> Callable[[T], T]:
    """Class decorator adding a scorer to SCORERS under `name` (configs select scorers by name)."""

    def add(cls: T) -> T:
        if name in SCORERS and SCORERS[name] is not cls:
            raise ValueError(f"a scorer named {name!r} is already registered ({SCORERS[name].__name__})")
        SCORERS[name] = cls
        return cls

    return add
