"""Data: the dataset directory contract (manifest, splits, class text corpus), shard specs and filesystems, the tar
reader, decode and augmentation, long-tail sampling, the bad-data ledger, and the builders (shards from an image
folder or web-caption layout, the rendered demo)."""
