"""A long-tailed dataset that is not our rendered demo, and what a well-trained small model gets on it.

    python -m pipelines.digits_lt --out runs/datasets/digits-lt [--reference-steps 1500]

The images are scikit-learn's handwritten digits (1,797 real 8x8 scans, bundled with the library: nothing is
downloaded), upscaled to 32 px RGB PNGs. Train is long-tailed (10 classes, 120 -> 2 images, imbalance 50, the
counts given to the digits in a seeded order); val (20 per class) and test (30 per class) are balanced. The
dataset directory is built the way a user builds ImageNet-LT: PNG files, split files of `path label` lines and a
class-name file through `uniproto build-shards`.

The reference is a small CNN (two conv blocks and a linear layer, about 60k parameters) trained from scratch on
the same train images with sqrt class resampling, AdamW and a cosine schedule, for many more steps than it needs
to converge; its test top-1 by shot group is what "a well-trained small model" means in the recipe check
(docs/benchmarks.md). The last stdout line is one JSON object: the dataset summary and the reference's figures.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VAL_PER_CLASS, TEST_PER_CLASS = 20, 30
N_MAX, IMBALANCE = 120, 50.0
SIZE = 32  # px of the written images


def _images(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 RGB images [N, 32, 32, 3] and labels [N] of scikit-learn's digits."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    out = np.empty((len(digits.images), SIZE, SIZE, 3), np.uint8)
    for i, img in enumerate(digits.images):  # 8x8, values 0..16, ink high
        gray = Image.fromarray(np.uint8(255 - img * 255 / 16)).resize((SIZE, SIZE), Image.BILINEAR)
        out[i] = np.repeat(np.asarray(gray)[:, :, None], 3, axis=2)
    return out, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, seed: int) -> tuple[dict[str, list[int]], list[int]]:
    """Indices per split (train long-tailed, val/test balanced) and the train counts per class."""
    from system.data.longtail import longtail_counts

    rng = np.random.default_rng(seed)
    counts = longtail_counts(len(CLASS_NAMES), N_MAX, IMBALANCE)  # rank r -> images
    rank = rng.permutation(len(CLASS_NAMES))  # class c gets counts[rank[c]]
    train_counts = [counts[rank[c]] for c in range(len(CLASS_NAMES))]
    splits: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for c in range(len(CLASS_NAMES)):
        idx = rng.permutation(np.flatnonzero(labels == c))
        splits["test"] += idx[:TEST_PER_CLASS].tolist()
        splits["val"] += idx[TEST_PER_CLASS : TEST_PER_CLASS + VAL_PER_CLASS].tolist()
        start = TEST_PER_CLASS + VAL_PER_CLASS
        splits["train"] += idx[start : start + train_counts[c]].tolist()
    return splits, train_counts


def write_dataset(out: Path, seed: int = 0, overwrite: bool = False) -> dict:
    """Images, split files and class names under out/source, then `uniproto build-shards` into out."""
    from PIL import Image

    from system.data.build_shards import BuildRequest, build
    from system.data.shard_build import BuildOptions

    images, labels = _images(seed)
    splits, train_counts = split_indices(labels, seed)
    if (out / "manifest.json").is_file() and not overwrite:  # built before: the build is deterministic
        return {"reused": True, "train_counts": train_counts}
    src = out.parent / f"{out.name}-source"
    (src / "images").mkdir(parents=True, exist_ok=True)
    for split, idx in splits.items():
        lines = []
        for i in idx:
            rel = f"images/{i:04d}.png"
            if not (src / rel).is_file():
                Image.fromarray(images[i]).save(src / rel)
            lines.append(f"{rel} {labels[i]}")
        (src / f"{split}.txt").write_text("\n".join(lines) + "\n")
    (src / "classnames.txt").write_text("\n".join(CLASS_NAMES) + "\n")
    request = BuildRequest(
        out=str(out),
        train_split=str(src / "train.txt"),
        image_root=str(src),
        val_split=str(src / "val.txt"),
        test_split=str(src / "test.txt"),
        class_names=str(src / "classnames.txt"),
        options=BuildOptions(max_side=0, samples_per_shard=128, seed=seed, overwrite=overwrite),
    )
    summary = build(request, say=None)
    summary["train_counts"] = train_counts
    return summary


def _small_cnn(num_classes: int):
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(64, num_classes),
    )  # fmt: skip


def reference_cnn(
    images: np.ndarray, labels: np.ndarray, splits: dict[str, list[int]], train_counts: list[int], steps: int,
    seed: int = 0,
) -> dict:  # fmt: skip
    """Train the small CNN on the train split; test top-1 by shot group at the step count best on val."""
    import torch
    import torch.nn.functional as F

    from system.method.metrics import shot_accuracy

    torch.manual_seed(seed)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0  # [N, 3, 32, 32]
    y = torch.from_numpy(labels)  # [N]
    tr = torch.tensor(splits["train"])
    weights = torch.tensor(train_counts, dtype=torch.float64).pow(-0.5)[y[tr]]  # [n] sqrt resampling
    model = _small_cnn(len(CLASS_NAMES))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s / steps, 1)))
    )
    gen = torch.Generator().manual_seed(seed)

    def evaluate(split: str) -> np.ndarray:
        model.eval()
        with torch.no_grad():
            preds = model(x[splits[split]]).argmax(1).numpy()
        model.train()
        return preds

    best = (-1.0, None)
    for step in range(1, steps + 1):
        idx = tr[torch.multinomial(weights, 64, replacement=True, generator=gen)]
        batch = x[idx]
        shift = torch.randint(
            -2, 3, (2,), generator=gen
        ).tolist()  # small translations: the usual digit augment
        batch = torch.roll(batch, shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(batch), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if step % 100 == 0 or step == steps:
            val_acc = float((evaluate("val") == labels[splits["val"]]).mean() * 100)
            if val_acc >= best[0]:
                best = (val_acc, (step, evaluate("test")))
    step, preds = best[1]
    acc = shot_accuracy(preds, labels[splits["test"]], train_counts)
    return {"steps": steps, "chosen_step": step, "val_top1": best[0]} | {
        g: acc[g] for g in ("overall", "many", "medium", "few")
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m pipelines.digits_lt", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="runs/datasets/digits-lt", help="dataset directory to create")
    p.add_argument("--seed", type=int, default=0, help="the split and the class order of the long tail")
    p.add_argument(
        "--reference-seeds", default="0,1,2", help="training seeds of the reference CNN, comma separated"
    )
    p.add_argument(
        "--reference-steps", type=int, default=1500, help="optimizer steps of the reference CNN (0: skip)"
    )
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    out = Path(a.out)
    t0 = time.perf_counter()
    summary = write_dataset(out, a.seed, a.overwrite)
    print(
        f"[digits-lt] dataset at {out}: train {summary['train_counts']} ({time.perf_counter() - t0:.1f}s)",
        flush=True,
    )
    result = {"dataset": str(out), "train_counts": summary["train_counts"]}
    if a.reference_steps:
        images, labels = _images(a.seed)
        splits, train_counts = split_indices(labels, a.seed)
        runs = []
        for seed in (int(x) for x in a.reference_seeds.split(",")):
            t0 = time.perf_counter()
            runs.append(reference_cnn(images, labels, splits, train_counts, a.reference_steps, seed))
            runs[-1]["seconds"] = round(time.perf_counter() - t0, 1)
            print(f"[digits-lt] reference CNN, seed {seed}: {json.dumps(runs[-1])}", flush=True)
        result["reference_cnn"] = {
            "runs": runs,
            "mean": {g: float(np.mean([r[g] for r in runs])) for g in ("overall", "many", "medium", "few")},
        }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
