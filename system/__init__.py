"""uniproto's library, one folder per layer, each importing from the layers below it (docs/architecture.md; the
config reads two leaf registries above it, which import nothing of ours): config/ and log_levels at the bottom;
model/, data/ and reports/; method/ (plain torch, no Ray); text/ and experiments/; runtime/ (every
`import ray`) and launch/ (job submission). It imports nothing from the app (`pipelines/`)."""
