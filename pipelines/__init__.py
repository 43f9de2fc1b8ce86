"""The app on top of `system/`: the Ray jobs (`python -m pipelines.<job>`: run, sweep, pretrain, finetune,
ablate), the `uniproto` CLI, the benchmarks (`bench/`) and the shipped configs (`configs/*.yaml`)."""
