"""Class text: corpus reading, relevance scorers, filtering, attribute phrases, caption pairing."""

# Importing the package registers the built-in model scorers beside `lexical`, so any config that names one
# (data.text_scorer, checked by system.config against system.text.scorer_registry) finds it; their heavy
# imports happen only when one is built.
from system.text import embedding_scorers, retrieval  # noqa: F401
