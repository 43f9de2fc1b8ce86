"""The benchmarks (`uniproto benchmark train|data|gpu`, `python -m pipelines.bench.stage2`): each prints its
figures next to a peer run in the same script (open_clip_train, webdataset + DataLoader, a bare loop)."""
