"""Stage 1 alone: Ray Data stream -> Ray Train workers with DeepSpeed -> checkpoint (with a consolidated model.pt).

    python -m pipelines.pretrain --config pipelines/configs/demo.yaml [--set ...]

Running it again with the same run name resumes from the last checkpoint. Writes <run dir>/stage1.json.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from pipelines.common import parse_args, prepare_run


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ctx = prepare_run(parse_args("uniproto pretrain", __doc__, argv))
    from system.ray_cluster import init_ray
    from system.ray_pretrain import run_stage1

    with ctx.timer("ray"):
        print(f"[uniproto] {init_ray(ctx.cfg)}", flush=True)
    with ctx.timer("stage 1"):
        result = run_stage1(ctx.cfg, ctx.shared(), name=f"{ctx.cfg.run.name}-stage1")
    if result.error:
        raise RuntimeError(f"stage 1 failed: {result.error}")
    out = {
        "checkpoint": result.checkpoint.path,
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "stage_seconds": ctx.timer.seconds,
        "prototypes": ctx.prototype_stats,
    }
    (ctx.run_dir / "stage1.json").write_text(json.dumps(out, indent=2))
    print(f"[uniproto] stage-1 checkpoint: {out['checkpoint']}")
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
