"""`uniproto` console script: one entry point, a subcommand per job (registry, not an if-chain).

The app's side of the line: the library (system/) names no pipeline, so what it needs of them is passed in
from here: the stages `uniproto submit` may run as Ray jobs, the stage 1 that `uniproto benchmark train`
measures.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable

from system.user_errors import exit_2_on_user_errors


def _make_demo_data(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="uniproto make-demo-data", description="Render the embedded long-tailed dataset."
    )
    p.add_argument("--out", required=True, help="dataset directory to create")
    p.add_argument("--classes", type=int, default=24)
    p.add_argument("--imbalance", type=float, default=100.0, help="n_max / n_min")
    p.add_argument("--n-max", type=int, default=300, help="train images of the most frequent class")
    p.add_argument("--val-per-class", type=int, default=20)
    p.add_argument("--test-per-class", type=int, default=30)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--samples-per-shard", type=int, default=100, help="small shards: Ray reads one shard per task"
    )
    p.add_argument(
        "--profile",
        choices=["balanced", "crowded"],
        default="balanced",
        help="crowded: a fine-grained tail (families of classes differing only in pattern), for the ablation",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--workers", type=int, default=1, help="processes rendering shards (the same bytes)")
    a = p.parse_args(argv)
    from system.data.demo_data import make_demo_dataset

    t0 = time.perf_counter()
    m = make_demo_dataset(
        a.out,
        num_classes=a.classes,
        imbalance=a.imbalance,
        n_max=a.n_max,
        val_per_class=a.val_per_class,
        test_per_class=a.test_per_class,
        image_size=a.image_size,
        seed=a.seed,
        overwrite=a.overwrite,
        samples_per_shard=a.samples_per_shard,
        profile=a.profile,
        workers=a.workers,
    )
    summary = {s: i.num_samples for s, i in m.splits.items()}
    print(
        json.dumps(
            {
                "out": a.out,
                "classes": m.num_classes,
                "splits": summary,
                "seconds": round(time.perf_counter() - t0, 1),
            }
        )
    )
    return 0


# The pipeline stages, each the module whose main(argv) runs it: `uniproto <stage>` runs one in this process,
# `uniproto submit <stage>` as a Ray job (`python -m <module>` in the uploaded working directory).
STAGES: dict[str, str] = {
    "run": "pipelines.run",
    "sweep": "pipelines.sweep",
    "ablate": "pipelines.ablate",
    "pretrain": "pipelines.pretrain",
    "finetune": "pipelines.finetune",
}


def _stage(name: str) -> Callable[[list[str]], int]:
    def run(argv: list[str]) -> int:
        importlib.import_module(STAGES[name]).main(argv)
        return 0

    return run


def _prototypes(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="uniproto prototypes",
        description="Uniform class prototypes on the sphere (simplex ETF for K <= d+1, orthogonal simplices for "
        "K <= 2d, else optimised); the last line printed is one JSON object with their geometry.",
    )
    p.add_argument("--num-classes", type=int, help="K (default: the number of --class-names)")
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--method", default="auto", choices=["auto", "simplex_etf", "orthoplex", "optimized"])
    p.add_argument(
        "--init", default="auto", choices=["auto", "gaussian", "code"], help="optimiser start (K > 2d)"
    )
    p.add_argument("--steps", type=int, help="optimiser steps (default: a budget from K and d)")
    p.add_argument(
        "--max-seconds",
        type=float,
        help="stop the optimiser after this long (then timing decides the result)",
    )
    p.add_argument(
        "--device", default="auto", help="torch device for the optimiser; auto: cuda when available"
    )
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--class-names", help="text file, one class name per line: row c of --out is line c's class"
    )
    p.add_argument(
        "--class-embeddings",
        help="[K, d] .npy of class text embeddings, in class order: prototypes assigned to classes by linear "
        "assignment (max total cosine); without it row c is simply prototype c",
    )
    p.add_argument(
        "--out", help="write the [K, d] float32 array here (.npy) and the class order beside it (.json)"
    )
    a = p.parse_args(argv)
    import numpy as np
    import torch

    from system.method.prototype_assignment import assign_prototypes
    from system.method.prototypes import build_prototypes, prototype_stats, save_prototypes

    names = None
    if a.class_names:
        with open(a.class_names, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip()]
    k = a.num_classes if a.num_classes is not None else (len(names) if names else None)
    if k is None:
        p.error("give --num-classes or --class-names")
    if names is not None and len(names) != k:
        p.error(f"--class-names has {len(names)} names, --num-classes is {k}")
    if a.threads:
        torch.set_num_threads(a.threads)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if a.device == "auto" else a.device
    opt = {k_: v for k_, v in (("steps", a.steps), ("max_seconds", a.max_seconds)) if v is not None}
    if a.method in ("auto", "optimized") and (a.method == "optimized" or k > 2 * a.dim):
        opt.update(init=a.init, device=device)
        method = "optimized"
    else:  # an exact construction: the optimiser options do not apply
        method, opt = a.method, {}

    t0 = time.perf_counter()
    protos, info = build_prototypes(k, a.dim, seed=a.seed, method=method, **opt)  # [K, d]
    if a.class_embeddings:
        emb = torch.from_numpy(np.load(a.class_embeddings)).float()
        protos = assign_prototypes(protos, emb, method="text")
    seconds = time.perf_counter() - t0
    stats = {k_: float(v) for k_, v in prototype_stats(protos).items()}
    keys = ("method", "init", "steps", "stopped_by", "device", "optimized_max_cos", "code_max_cos")
    result = {
        **stats,
        "seconds": round(seconds, 3),
        "num_classes": k,
        "dim": a.dim,
        "seed": a.seed,
        **{k_: info[k_] for k_ in keys if k_ in info},
        "assign": "text" if a.class_embeddings else "none",
        "out": a.out,
    }
    if a.out:
        meta = {k_: v for k_, v in result.items() if k_ != "out"}
        save_prototypes(a.out, protos, class_names=names, meta=meta)
    print(json.dumps(result))
    return 0


def _export(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="uniproto export",
        description="A stage-1 checkpoint as one fp32 safetensors file; last line is JSON.",
    )
    p.add_argument(
        "--checkpoint",
        required=True,
        help="checkpoint dir (model.pt) or its s3:// or gs:// URL, or a run dir with stage1.json",
    )
    p.add_argument("--out", required=True, help="the .safetensors file to write")
    p.add_argument("--overwrite", action="store_true")
    a = p.parse_args(argv)
    from system.model.checkpoint import CheckpointError
    from system.model.export import export_safetensors

    try:
        summary = export_safetensors(a.checkpoint, a.out, a.overwrite)
    except (FileNotFoundError, FileExistsError, CheckpointError) as e:
        print(f"uniproto export: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary))
    return 0


def _submit(argv: list[str]) -> int:
    from pipelines.submit import main as submit_main

    return submit_main(argv, stages=STAGES)


# `uniproto benchmark <what>`: module of each benchmark's main (imported only when run).
BENCHMARKS = {"train": "pipelines.bench.train", "data": "pipelines.bench.data", "gpu": "pipelines.bench.gpu"}


def _benchmark(argv: list[str]) -> int:
    if not argv or argv[0] not in BENCHMARKS:
        print("usage: uniproto benchmark {train,data,gpu} [options] (see --help)", file=sys.stderr)
        return 2
    main = importlib.import_module(BENCHMARKS[argv[0]]).main
    if argv[0] == "train":  # "ours" is our stage 1 as `uniproto pretrain` runs it
        return main(argv[1:], stage1=STAGES["pretrain"])
    return main(argv[1:])


def build_shards_request(argv: list[str]):
    """`uniproto build-shards` arguments as the library's BuildRequest (a misplaced flag is a usage error)."""
    from system.data.build_shards import BuildRequest, BuildRequestError
    from system.data.shard_build import BuildOptions

    p = argparse.ArgumentParser(
        prog="uniproto build-shards",
        description="Build a dataset directory (WebDataset shards + manifest) from split files, an image-folder "
        "tree or img2dataset web-caption shards. Deterministic, parallel, resumable (run it again after an "
        "interruption). The last line printed is one JSON object.",
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--train-split", help="split file of `relative/path label` lines (with --image-root)")
    src.add_argument("--image-folder", help="a folder per class; sorted folder names give the label order")
    src.add_argument(
        "--web-shards", help="img2dataset shards: brace pattern or glob of .tar, `::` between specs"
    )
    p.add_argument("--image-root", help="folder the split files' paths are relative to")
    p.add_argument("--val-split", help="split file for val")
    p.add_argument("--test-split", help="split file for test")
    p.add_argument(
        "--class-names",
        help="one class per line in label order: `name`, `label name` or `n01440764 name` lines",
    )
    p.add_argument("--class-text", help="VL-LTR corpus folder: desc_<label>.txt (or <id>.txt, <name>.txt)")
    p.add_argument("--synonyms", help="YAML/JSON mapping class name (or label) -> list of synonyms")
    p.add_argument("--val-per-class", type=int, default=0, help="images per class held out for val (seeded)")
    p.add_argument(
        "--test-per-class", type=int, default=0, help="images per class held out for test (seeded)"
    )
    p.add_argument("--out", required=True, help="dataset directory to create (or resume)")
    p.add_argument("--name", help="dataset name in the manifest (default: the --out folder's name)")
    p.add_argument("--max-side", type=int, default=512, help="longest side after re-encoding (0: keep)")
    p.add_argument("--jpeg-quality", type=int, default=90)
    p.add_argument("--samples-per-shard", type=int, default=1000)
    p.add_argument("--workers", type=int, default=0, help="writer processes (default: min(4, cpus))")
    p.add_argument("--seed", type=int, default=0, help="sample order in the shards and the holdout draw")
    p.add_argument("--overwrite", action="store_true", help="replace an existing dataset at --out")
    a = p.parse_args(argv)
    options = BuildOptions(
        max_side=a.max_side,
        jpeg_quality=a.jpeg_quality,
        samples_per_shard=a.samples_per_shard,
        workers=a.workers,
        seed=a.seed,
        overwrite=a.overwrite,
        name=a.name,
    )
    try:
        return BuildRequest(
            out=a.out,
            train_split=a.train_split,
            image_folder=a.image_folder,
            web_shards=a.web_shards,
            image_root=a.image_root,
            val_split=a.val_split,
            test_split=a.test_split,
            class_names=a.class_names,
            class_text=a.class_text,
            synonyms=a.synonyms,
            val_per_class=a.val_per_class,
            test_per_class=a.test_per_class,
            options=options,
        )
    except BuildRequestError as e:
        p.error(str(e))


def _build_shards(argv: list[str]) -> int:
    from system.data.build_shards import build

    print(json.dumps(build(build_shards_request(argv))))
    return 0


def _filter_text(argv: list[str]) -> int:
    from pathlib import Path

    from system.config import load_config
    from system.text.filter_eval import run_filter_text

    p = argparse.ArgumentParser(
        prog="uniproto filter-text",
        description="Run the text filter on a dataset's class corpus; per-class report; last line is JSON.",
    )
    p.add_argument("--root", required=True, help="dataset directory (manifest.json + text/)")
    p.add_argument("--scorer", help="relevance scorer (lexical, minilm, clip_text, retrieval, ...)")
    p.add_argument(
        "--threshold", type=float, help="drop sentences scoring below (default: data.filter_threshold)"
    )
    p.add_argument("--top-k", type=int, help="keep at most K sentences per class")
    p.add_argument("--config", help="a run config to take data./model. settings from")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    p.add_argument("--out", help="report folder (default: <run.output_dir>/filter-text/<scorer>)")
    a = p.parse_args(argv)
    overrides = list(a.set) + [f"data.root={json.dumps(a.root)}"]
    if a.scorer is not None:
        overrides.append(f"data.text_scorer={json.dumps(a.scorer)}")
    if a.threshold is not None:
        overrides.append(f"data.filter_threshold={a.threshold!r}")
    if a.top_k is not None:
        overrides.append(f"data.filter_top_k={a.top_k}")
    cfg = load_config(a.config, overrides)
    out = a.out or Path(cfg.run.output_dir) / "filter-text" / cfg.data.text_scorer
    summary = run_filter_text(cfg, out)
    if summary["precision"] is not None or summary["recall"] is not None:
        fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
        print(
            f"[filter-text] {summary['scorer']}: dropping boilerplate precision {fmt(summary['precision'])}, "
            f"recall {fmt(summary['recall'])} (kept {summary['kept']}, dropped {summary['dropped']}); "
            f"report in {out}"
        )
    else:
        print(
            f"[filter-text] {summary['scorer']}: kept {summary['kept']}, dropped {summary['dropped']}; "
            f"report in {out} (no truth labels: precision/recall not measured)"
        )
    print(json.dumps(summary))
    return 0


def check_shards_request(argv: list[str]):
    """`uniproto check-shards` arguments as the library's CheckRequest."""
    from system.runtime.check_shards import CheckRequest
    from system.runtime.check_shards import __doc__ as doc

    p = argparse.ArgumentParser(prog="uniproto check-shards", description=(doc or "").strip().splitlines()[0])
    p.add_argument(
        "spec", help="shards: a dataset dir, a folder, a file, a brace or glob pattern, s3:// or gs://"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first bad sample or shard (exit 1)")
    p.add_argument("--cpus", type=int, default=os.cpu_count() or 2, help="logical CPUs of the local Ray")
    classes = p.add_mutually_exclusive_group()
    classes.add_argument("--class-count", type=int, help="labels must lie in [0, K)")
    classes.add_argument("--root", help="a dataset directory: its classes (and class text) check the labels")
    p.add_argument(
        "--split", action="append", help="with a dataset directory SPEC: only this split (repeatable)"
    )
    p.add_argument("--image-size", type=int, default=64, help="decode size (what the run would use)")
    p.add_argument(
        "--max-member-mib",
        type=int,
        default=CheckRequest.max_member_mib,
        help="tar members declaring more MiB are skipped unread, counted as oversized_member (default 64)",
    )
    a = p.parse_args(argv)
    return CheckRequest(
        spec=a.spec,
        strict=a.strict,
        cpus=a.cpus,
        class_count=a.class_count,
        root=a.root,
        splits=tuple(a.split) if a.split else None,
        image_size=a.image_size,
        max_member_mib=a.max_member_mib,
    )


def _check_shards(argv: list[str]) -> int:
    from system.runtime.check_shards import check_shards

    return check_shards(check_shards_request(argv))


def _models(argv: list[str]) -> int:
    from system.model.factory import list_architectures

    print("\n".join(list_architectures()))
    return 0


COMMANDS: dict[str, tuple[Callable[[list[str]], int], str]] = {
    "make-demo-data": (_make_demo_data, "render the embedded long-tailed image-text dataset"),
    "build-shards": (
        _build_shards,
        "your images (split files, class folders, img2dataset web captions) -> a dataset directory",
    ),
    "run": (_stage("run"), "the whole pipeline: text filter, stage 1 + stage 2 sweep, test report"),
    "sweep": (
        _stage("sweep"),
        "a Ray Tune sweep (--space, --samples; ASHA, Optuna), resumable; best.yaml out",
    ),
    "ablate": (
        _stage("ablate"),
        "what each component buys: baseline .. full + a no-text control, over seeds (mean ± std)",
    ),
    "pretrain": (_stage("pretrain"), "stage 1 alone (Ray Data + Ray Train + DeepSpeed)"),
    "finetune": (_stage("finetune"), "stage 2 + evaluation from a stage-1 checkpoint"),
    "submit": (
        _submit,
        "run a stage as a Ray job on a cluster (--follow; status/logs/stop/list ID), checked before it leaves",
    ),
    "prototypes": (
        _prototypes,
        "uniform class prototypes (simplex ETF, orthogonal simplices, or optimised) with their geometry",
    ),
    "export": (_export, "a stage-1 checkpoint's weights as one fp32 safetensors file"),
    "filter-text": (
        _filter_text,
        "the text filter alone on a dataset's class corpus (--scorer): per-class report, boilerplate P/R",
    ),
    "models": (_models, "list open_clip architectures (ours included)"),
    "check-shards": (
        _check_shards,
        "stream shards (dir, brace spec, s3://, gs://) through read + decode; counts bad samples/shards as JSON",
    ),
    "benchmark": (
        _benchmark,
        "benchmark train: our stage 1 vs open_clip_train and a bare torch loop; "
        "benchmark data: our Ray Data input pipeline vs webdataset + DataLoader; "
        "benchmark gpu: the one-GPU check (bare DeepSpeed, open_clip_train, ours, resume) as JSON",
    ),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in {"-h", "--help"} or argv[0] not in COMMANDS:
        width = max(map(len, COMMANDS))
        lines = [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
        print("usage: uniproto <command> [options]\n\ncommands:\n" + "\n".join(lines))
        return 0 if argv and argv[0] in {"-h", "--help"} else 2
    return exit_2_on_user_errors(COMMANDS[argv[0]][0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
