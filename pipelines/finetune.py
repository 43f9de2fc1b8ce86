"""Stage 2 alone, from a stage-1 checkpoint: class-mean prototypes + learnable head, lambda chosen on val.

    python -m pipelines.finetune --config ... [--checkpoint DIR]

DIR holds model.pt (a stage-1 checkpoint: a local directory or an s3:// or gs:// URL); by default the one recorded
in <run dir>/stage1.json.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pipelines.common import parse_args, prepare_run
from system.method.finetune import shot_accuracy_at
from system.model.checkpoint import MODEL_FILE
from system.model.export import checkpoint_location, local_checkpoint
from system.reports.report import accuracy_table


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(
        "uniproto finetune",
        __doc__,
        argv,
        extra=lambda p: p.add_argument("--checkpoint", help="stage-1 checkpoint dir or URL"),
    )
    ctx = prepare_run(args, need_prototypes=False)
    cfg = ctx.cfg
    checkpoint = checkpoint_location(args.checkpoint or ctx.run_dir)  # a dir or URL, or the run's stage1.json
    from system.runtime.cluster import init_ray
    from system.runtime.sweep import load_branch_logits, run_stage2

    with ctx.timer("ray"):
        print(f"[uniproto] {init_ray(cfg)}", flush=True)
    with ctx.timer("stage 2"), local_checkpoint(checkpoint) as ckpt:
        print(f"[uniproto] stage-1 weights: {checkpoint}", flush=True)
        metrics = run_stage2(cfg, ctx.stage_inputs(), str(ckpt / MODEL_FILE), ctx.run_dir / "stage2")
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
