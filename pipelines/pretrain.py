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
    from system.data.ledger import data_line
    from system.runtime.cluster import init_ray
    from system.runtime.pretrain import run_stage1
    from system.runtime.reader import ledger_summary, new_ledger
    from system.runtime.resume import checkpoint_url

    with ctx.timer("ray"):
        print(f"[uniproto] {init_ray(ctx.cfg)}", flush=True)
    ledger = new_ledger()
    with ctx.timer("stage 1"):
        result = run_stage1(ctx.cfg, ctx.stage_inputs(), name=f"{ctx.cfg.run.name}-stage1", ledger=ledger)
    if result.error:
        raise RuntimeError(f"stage 1 failed: {result.error}")
    # What the train stream read to the end, over all epochs: good samples, skips by reason, failed shards.
    data = ledger_summary(ledger)
    print(f"[uniproto] stage-1 data: {data_line(data)}", flush=True)
    out = {
        "checkpoint": checkpoint_url(result.checkpoint),
        "metrics": {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))},
        "stage_seconds": ctx.timer.seconds,
        "prototypes": ctx.prototype_stats,
        "data": data,
    }
    out["summary"] = stage1_summary(out["metrics"], ctx.timer.seconds["stage 1"])
    (ctx.run_dir / "stage1.json").write_text(json.dumps(out, indent=2))
    print("[uniproto] stage 1 (last epoch):\n" + "\n".join(f"  {k}: {v}" for k, v in out["summary"].items()))
    print(
        f"[uniproto] stage-1 checkpoint: {out['checkpoint']} "
        f"(one fp32 file: uniproto export --checkpoint {ctx.run_dir} --out model.safetensors)"
    )
    return out


def stage1_summary(m: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The figures people look for first, from the last epoch's report (already reduced over workers)."""
    out: dict[str, Any] = {"wall_s": round(seconds, 1), "epochs": m.get("epoch"), "steps": m.get("step")}
    for k in ("samples_per_s", "samples_per_s_per_worker"):
        if k in m:
            out[k] = round(m[k], 1)
    if "data_wait_fraction" in m:
        out["data_wait_percent"] = round(100 * m["data_wait_fraction"], 1)
    out |= {k: round(v, 4) for k, v in m.items() if k.endswith("_loss") or k == "loss"}
    for k in ("lr", "logit_scale", "val_ncm_top1", "val_zs_top1", "resumed_from_step"):
        if k in m:
            out[k] = m[k]
    return out


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
