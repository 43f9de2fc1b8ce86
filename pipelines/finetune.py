"""Stage 2 alone, from a stage-1 checkpoint: class-mean prototypes + learnable head, lambda chosen on val.

    python -m pipelines.finetune --config ... [--checkpoint DIR]

DIR holds model.pt (a stage-1 checkpoint); by default the one recorded in <run dir>/stage1.json.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pipelines.common import parse_args, prepare_run
from system.method.finetune import shot_accuracy_at
from system.model.checkpoint import MODEL_FILE
from system.model.export import find_checkpoint
from system.reports.report import accuracy_table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        "uniproto finetune",
        __doc__,
        argv,
        extra=lambda p: p.add_argument("--checkpoint", help="stage-1 checkpoint dir"),
    )
    ctx = prepare_run(args, need_prototypes=False)
    cfg = ctx.cfg
    weights = find_checkpoint(args.checkpoint or ctx.run_dir) / MODEL_FILE  # a dir, or the run's stage1.json
    from system.runtime.cluster import init_ray
    from system.runtime.sweep import load_branch_logits, run_stage2

    with ctx.timer("ray"):
        print(f"[uniproto] {init_ray(cfg)}", flush=True)
    with ctx.timer("stage 2"):
        metrics = run_stage2(cfg, ctx.stage_inputs(), str(weights), ctx.run_dir / "stage2")
    rep = load_branch_logits(ctx.run_dir / "stage2", cfg.eval.report_split)
    lam = metrics["best_lambda"]
    acc = shot_accuracy_at(rep, lam, ctx.manifest.train_counts, cfg.eval)
    out = {
        "overall": acc["overall"],
        "many": acc["many"],
        "medium": acc["medium"],
        "few": acc["few"],
        **metrics,
    }
    (ctx.run_dir / "finetune.json").write_text(json.dumps(out, indent=2, default=float))
    print(accuracy_table({f"lambda={lam:.2f}": acc}))
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
