"""The ablation: what each component of the method buys, over several seeds, selected on val, reported on test.

    uniproto ablate --config pipelines/configs/ablate.yaml [--seeds 0,1,2] [--arms a,b] [--set data.root=...]
    python -m pipelines.ablate --config ...               (the form `ray job submit` uses)

Arms (stage-1 recipes, system/experiments/ablation.py): baseline (plain cross-entropy), contrastive, prototypes,
text_filter, and the no-text control. Each arm is a Ray Tune run over the seeds in <run dir>/<arm>/, so an
interrupted ablation resumes where it stopped (finished seeds are kept). The table's variants read the arms
with their classifier: `full` is the text_filter arm with the prototype-guided classifier.

Outputs in <run dir>: ablation.json, ablation.md, ablation.png. The last stdout line is one JSON object
mapping each variant to its mean overall / many / medium / few top-1.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.common import parse_args, prepare_run
from system.config import ConfigError, load_config, save_config
from system.experiments import ablation as ab
from system.experiments.spaces import Space, grid_size, load_space, unused_keys


def _ablate_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--seeds", default="0,1,2", help="training seeds, comma separated (at least 1; 3 by default)"
    )
    p.add_argument("--arms", help=f"a subset of the arms, comma separated (default: all of {list(ab.ARMS)})")
    p.add_argument(
        "--space",
        help="optional grid of hyperparameters (e.g. tune_spaces/proto_temperature.yaml) searched in every arm; "
        "each variant keeps the setting with the best mean val top-1 over the seeds",
    )


def _parse_list(text: str, what: str, cast=str) -> list:
    try:
        items = [cast(x.strip()) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--{what}: expected a comma-separated list, got {text!r}") from None
    if not items or len(set(items)) != len(items):
        raise ConfigError(f"--{what}: expected distinct values, got {text!r}")
    return items


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("uniproto ablate", __doc__, argv, extra=_ablate_args)
    seeds = _parse_list(args.seeds, "seeds", int)
    arms = _parse_list(args.arms, "arms") if args.arms else list(ab.ARMS)
    unknown = [a for a in arms if a not in ab.ARMS]
    if unknown:
        raise ConfigError(f"--arms: unknown {unknown} (known: {list(ab.ARMS)})")
    base = load_config(args.config, args.set)
    space = load_space(args.space, base) if args.space else {}
    not_grid = [k for k, (kind, _) in space.items() if kind != "grid"]
    if not_grid or "run.seed" in space:
        raise ConfigError(
            f"--space {args.space}: the ablation takes grid entries other than run.seed, got {list(space)}"
        )
    root = base.run_dir
    spaces = arm_spaces(args.config, args.set, arms, space, root)
    root.mkdir(parents=True, exist_ok=True)
    save_config(base, root / "config.yaml")
    return run_ablation(args, arms, seeds, spaces, root)


def arm_spaces(
    config: str, user_sets: list[str], arms: list[str], space: Space, root: Path
) -> dict[str, Space]:
    """Each arm's grid. Loading every arm's config here validates it before Ray starts (a bad override fails
    naming its key). An arm does not search a key it cannot use (tau_p in the contrastive arm): those trials
    would only repeat the same training."""
    spaces: dict[str, Space] = {}
    for arm in arms:
        unused = unused_keys(space, load_config(config, _arm_sets(user_sets, arm, root)))
        for key, why in unused.items():
            print(f"[uniproto] arm {arm}: {key} not searched ({why})", flush=True)
        spaces[arm] = {k: v for k, v in space.items() if k not in unused}
    return spaces


def _arm_sets(user_sets: list[str], arm: str, root: Path) -> list[str]:
    """The user's overrides, then the arm's, then where it runs. A single run per seed: no search space,
    no early stopping (every seed must finish for the mean to mean anything)."""
    arm_sets = [f"{k}={json.dumps(v)}" for k, v in ab.ARMS[arm].overrides.items()]
    place = [f"run.output_dir={root}", f"run.name={arm}", "sweep.space=null", "sweep.scheduler=fifo"]
    return [*user_sets, *arm_sets, *place, "sweep.search=basic", "sweep.num_samples=1"]


def run_ablation(
    args: argparse.Namespace, arms: list[str], seeds: list[int], spaces: dict[str, Space], root: Path
) -> dict[str, Any]:
    """Train every arm over the seeds (and its grid in `spaces[arm]`), then read the variants off the trials."""
    from system.method.finetune import blended_predictions, is_collapsed, shot_accuracy_at, top_class_share
    from system.runtime.cluster import init_ray
    from system.runtime.sweep import load_branch_logits, run_sweep

    t0 = time.perf_counter()
    per_arm: dict[str, list[dict[str, Any]]] = {}
    text_quality: dict[str, Any] = {}
    manifest = cfg = None
    for i, arm in enumerate(arms):
        ctx = prepare_run(argparse.Namespace(config=args.config, set=_arm_sets(args.set, arm, root)))
        cfg, manifest = ctx.cfg, ctx.manifest
        if i == 0:
            print(f"[uniproto] {init_ray(cfg)}", flush=True)
        q = ctx.text_report.get("quality")
        if q:
            text_quality[arm] = q
        settings = grid_size(spaces[arm])
        grid = f" x {settings} settings of {', '.join(spaces[arm])}" if settings > 1 else ""
        with ctx.timer(f"arm {arm} ({i + 1}/{len(arms)}): {len(seeds)} seeds{grid}"):
            out = run_sweep(
                cfg, {**spaces[arm], "run.seed": ("grid", seeds)}, ctx.stage_inputs(), ctx.run_dir
            )
        per_arm[arm] = out["trials"]
        done = [t for t in out["trials"] if t["status"] == "completed"]
        if len(done) < len(out["trials"]):
            errors = [t.get("error", t["status"]).strip().splitlines()[-1] for t in out["trials"]]
            raise RuntimeError(
                f"arm {arm}: {len(done)} of {len(out['trials'])} trials completed; errors: {errors}"
            )

    assert cfg is not None and manifest is not None
    counts, split = manifest.train_counts, cfg.eval.report_split
    runs: dict[str, list[dict[str, Any]]] = {}
    selected: dict[str, dict[str, Any]] = {}
    # per variant and seed: the report split's (predictions, labels), for the paired per-class bootstrap
    predictions: dict[str, dict[int, tuple[Any, Any]]] = {}
    test_labels = None
    for name, variant in ab.VARIANTS.items():
        if variant.arm not in per_arm:
            continue
        val_key = "val_top1" if variant.classifier == "blend" else "val_top1_head"
        chosen, trials = _select_on_val(per_arm[variant.arm], val_key)
        selected[name] = chosen
        rows = []
        for t in sorted(trials, key=lambda t: t["params"]["run.seed"]):
            logits = load_branch_logits(t["path"], split)
            test_labels = logits.labels
            lam = 0.0 if variant.classifier == "head" else float(t["best_lambda"])
            acc = shot_accuracy_at(logits, lam, counts, cfg.eval)
            preds = blended_predictions(logits, lam)
            predictions.setdefault(name, {})[t["params"]["run.seed"]] = (preds, logits.labels)
            share = top_class_share(preds, manifest.num_classes)
            geometry = t.get("geometry_after") or {}
            rows.append(
                {g: acc[g] for g in ab.GROUPS}
                | {
                    "seed": t["params"]["run.seed"],
                    "lambda": lam,
                    # how firmly val picked that lambda (blend variants; None where the bootstrap was off)
                    "lambda_bootstrap": t.get("lambda_bootstrap") if variant.classifier == "blend" else None,
                    "val_top1": t[val_key],
                    "top_class_share": share,
                    "collapsed": is_collapsed(share, manifest.num_classes),
                    "tail_over_head_tail": geometry.get("tail_over_head_tail"),
                    "stage1_losses": {
                        k.removeprefix("final_"): v
                        for k, v in t.items()
                        if k.startswith("final_") and k.endswith("_loss") and k != "final_loss"
                    },
                }
            )
        runs[name] = rows
    summary = ab.summarise(runs)
    one_image = ab.one_image_points(test_labels, counts, cfg.eval.many_threshold, cfg.eval.few_threshold)
    pairs = [(b, a) for a, b in zip(ab.LADDER, ab.LADDER[1:], strict=False)] + [("no_text", "full")]
    comparisons = ab.compare(summary, pairs, one_image)
    class_ci = class_bootstrap(predictions, counts, cfg.eval.many_threshold, cfg.eval.few_threshold)
    md = ab.markdown(summary, comparisons, split)
    if class_ci:
        md += "\n" + ab.class_bootstrap_markdown(class_ci, split)
    lambda_lines = [
        f"| `{n}` | {r['seed']} | {r['lambda']:.2f} | {_boot_interval(r['lambda_bootstrap'])} |"
        for n, rows in runs.items()
        for r in rows
        if ab.VARIANTS[n].classifier == "blend"
    ]
    if lambda_lines:
        md += (
            "\nlambda chosen on val per seed, with the 2.5-97.5 percentiles of the lambdas chosen on "
            "bootstrap resamples of val (`finetune.bootstrap`):\n\n"
            "| variant | seed | lambda | bootstrap 95% |\n|---|---|---|---|\n"
            + "\n".join(lambda_lines)
            + "\n"
        )
    collapsed = [
        f"`{n}` seed {r['seed']} ({100 * r['top_class_share']:.0f}%)"
        for n, rows in runs.items()
        for r in rows
        if r["collapsed"]
    ]
    if collapsed:
        # A collapsed classifier's row is not a result: say so above the table's reading, not in a footnote.
        md = (
            f"**Warning: collapsed classifiers** (one class takes the share of {split} predictions given): "
            f"{', '.join(collapsed)}. Their rows measure a head that learned nothing, not the method: train longer "
            "(train.epochs, finetune.epochs) before reading the differences.\n\n" + md
        )
    geometry_lines = [
        f"| `{n}` | {ab.mean_std([r['tail_over_head_tail'] for r in rows])[0]:.3f} |"
        for n, rows in runs.items()
        if any(r["tail_over_head_tail"] is not None for r in rows) and n != "full"
    ]
    if geometry_lines:
        md += (
            "\nFeature geometry after stage 1 (train split, centred class centroids): mean tail-tail cosine "
            "distance over mean head-tail distance (< 1: the tail is crowded), mean over seeds.\n\n"
            "| arm | tail-tail / head-tail |\n|---|---|\n" + "\n".join(geometry_lines) + "\n"
        )
    chosen = [f"| `{n}` | {_setting(s)} |" for n, s in selected.items() if s]
    if chosen:
        md += "\nChosen on val (best mean val top-1 over the seeds):\n\n| variant | setting |\n|---|---|\n"
        md += "\n".join(chosen) + "\n"
    q = text_quality.get("text_filter")  # the filtering arm: the others keep every sentence on purpose
    if q and q.get("precision") is not None and q.get("recall") is not None:
        md += (
            f"\nText filter (boilerplate dropping on the corpus's known labels): precision "
            f"{q['precision']:.3f}, recall {q['recall']:.3f}.\n"
        )
    (root / "ablation.md").write_text(f"# Ablation `{root.name}`\n\n{md}\n![ablation](ablation.png)\n")
    ab.plot(root / "ablation.png", summary, f"{root.name}: {split} top-1, mean ± std over {len(seeds)} seeds")
    report = {
        "run": root.name,
        "seeds": seeds,
        "report_split": split,
        "select_split": cfg.eval.select_split,
        "variants": {
            n: {"arm": v.arm, "classifier": v.classifier} for n, v in ab.VARIANTS.items() if n in runs
        },
        "summary": summary,
        "comparisons": comparisons,
        # ab.bootstrap_pairs (the ladder, each variant against the baseline, full against no_text): 95% paired
        # per-class bootstrap
        "class_bootstrap": class_ci,
        "one_image_points": one_image,
        "space": {arm: {k: list(v[1]) for k, v in spaces[arm].items()} for arm in arms},
        "selected_on_val": selected,
        "runs": runs,
        "collapsed": collapsed,
        "text_filter_quality": text_quality,
        "dataset": ctx.dataset_summary(),
        "seconds": time.perf_counter() - t0,
    }
    (root / "ablation.json").write_text(json.dumps(report, indent=2, default=float))
    print(f"\n[uniproto] ablation on {split} ({len(seeds)} seeds, chosen on {cfg.eval.select_split})\n{md}")
    print(f"[uniproto] ablation: {root / 'ablation.md'} (+ ablation.json, ablation.png)")
    last = {n: {g: summary[n][g]["mean"] for g in ab.GROUPS} for n in summary}
    print(json.dumps(last), flush=True)
    return report


def class_bootstrap(
    predictions: dict[str, dict[int, tuple[Any, Any]]], counts: list[int], many: int, few: int
) -> list[dict[str, Any]]:
    """The paired per-class bootstrap of system/experiments/ablation.py for `ab.bootstrap_pairs` (each rung of the
    ladder against the one below, each variant against the baseline, full against no_text), over the seeds both
    arms have. `predictions[variant][seed]` = (report-split predictions, labels)."""
    rows = []
    for name, ref in ab.bootstrap_pairs(predictions):
        seeds = sorted(set(predictions[name]) & set(predictions[ref]))
        if not seeds:
            continue
        stats = ab.paired_class_bootstrap(
            [predictions[name][s] for s in seeds], [predictions[ref][s] for s in seeds], counts, many, few
        )
        rows.append({"variant": name, "vs": ref, "seeds": seeds, **stats})
    return rows


def _boot_interval(boot: dict[str, Any] | None) -> str:
    return "-" if not boot else f"[{boot['lambda_lo']:.2f}, {boot['lambda_hi']:.2f}]"


def _setting(params: dict[str, Any]) -> str:
    return ", ".join(f"`{k}={v}`" for k, v in params.items())


def _select_on_val(trials: list[dict[str, Any]], val_key: str) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Group an arm's trials by their non-seed parameters; keep the group with the best mean val top-1 (ties:
    the first setting in grid order). Test numbers are read only for the kept group."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for t in trials:
        key = json.dumps({k: v for k, v in t["params"].items() if k != "run.seed"}, sort_keys=True)
        groups.setdefault(key, []).append(t)
    best = max(groups, key=lambda k: ab.mean_std([t[val_key] for t in groups[k]])[0])
    return json.loads(best), groups[best]


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
