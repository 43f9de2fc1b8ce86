"""The bare loop of `uniproto benchmark train`: our model, loss, step and AdamW on pre-decoded in-memory batches
(no data loading, no Ray, no DeepSpeed), the ceiling for a model on given cores; and the child processes the
benchmark runs it in:

    python -m pipelines.bench.bare bare|floor|idle --arch A --image-size S --batch B --steps N --warmup W
        --classes K --threads T [--unfused-adamw] [floor: --out FILE] [idle: --actors N --rounds R]

* **bare**: the loop alone, `T` torch threads.
* **floor**: the loop as the train function of a one-worker Ray Train run on a local Ray started as ours is.
* **idle**: the loop beside a local Ray, in phases without and with idle actors (what each costs).

Each prints one `[bench] <kind> {json}` line last.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from pipelines.bench.stats import round_orders


def bare_step(
    arch: str,
    image_size: int,
    batch: int,
    num_classes: int,
    seed: int = 0,
    lr: float = 2e-3,
    weight_decay: float = 0.05,
    grad_clip: float = 1.0,
    fused: bool = True,
    precision: str = "fp32",
    device: str = "cpu",
    wrap=None,
):
    """One training step of the bare loop as a function (returns the loss tensor): the same model, loss, step
    (`Stage1Step`, logit-scale clamp included) and AdamW as ours, on two pre-decoded in-memory batches taken in
    turn (no data loading inside the step). `wrap(model, optimizer)`, when given, returns a DeepSpeed engine that
    then runs the forward, backward, clipping and step (pipelines.bench.gpu_parts)."""
    import torch

    from system.config import LossSection, OptimSection
    from system.method.class_prototypes import arch_embed_dim
    from system.method.losses import Stage1Loss
    from system.method.prototypes import uniform_prototypes
    from system.method.stage1_step import Stage1Step, clamp_logit_scale_, configure_device_math
    from system.model.factory import create_clip, preprocess_for, tokenizer_for
    from system.model.optim import build_adamw

    torch.manual_seed(seed)
    configure_device_math(device)
    model = create_clip(arch, None, image_size).to(device).train()
    protos = uniform_prototypes(num_classes, arch_embed_dim(arch), seed=seed)  # [K, d]
    loss_fn = Stage1Loss(protos, local_loss=LossSection().local_loss).to(device)
    opt = build_adamw(model, OptimSection(lr=lr, weight_decay=weight_decay, fused=fused))
    engine = wrap(model, opt) if wrap is not None else None
    runner = model if engine is None else engine  # what runs the forward
    step_fn = Stage1Step(runner, model, loss_fn, preprocess_for(model), precision)
    gen = torch.Generator().manual_seed(seed)
    tok = tokenizer_for(arch)
    batches = []
    for _ in range(2):
        labels = torch.randint(0, num_classes, (batch,), generator=gen)  # [B]
        images = torch.randint(0, 256, (batch, image_size, image_size, 3), generator=gen, dtype=torch.uint8)
        text = tok([f"a photo of a class {int(c)}, which has a red striped shape." for c in labels])  # [B, L]
        batches.append(tuple(t.to(device) for t in (images, text, labels)))
    count = [0]

    def step() -> torch.Tensor:
        images, text, labels = batches[count[0] % 2]
        count[0] += 1
        loss = step_fn(images, text, labels).loss
        if engine is not None:  # the engine clips (its config's gradient_clipping) and steps
            engine.backward(loss)
            engine.step()
        else:
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
            opt.step()
        clamp_logit_scale_(model)
        return loss

    return step


def timed_steps(step, batch: int, steps: int) -> float:
    """samples/s of `steps` calls of `step`."""
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / max(time.perf_counter() - t0, 1e-9)


def bare_loop(
    arch: str,
    image_size: int,
    batch: int,
    steps: int,
    warmup: int,
    num_classes: int,
    threads: int | None = None,
    seed: int = 0,
    fused: bool = True,
) -> dict[str, float]:
    """Single-process training steps on pre-decoded in-memory batches: samples/s after `warmup` steps."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    step = bare_step(arch, image_size, batch, num_classes, seed=seed, fused=fused)
    loss = None
    for _ in range(warmup):
        loss = step()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    seconds = time.perf_counter() - t0
    return {
        "samples_per_s": batch * steps / max(seconds, 1e-9),
        "steps": steps,
        "seconds": seconds,
        "threads": torch.get_num_threads(),
        "loss": float(loss.detach()) if loss is not None else float("nan"),
    }


def _loop_args(argv: list[str], *extra: str) -> argparse.Namespace:
    """The bare loop's arguments (as `loop_args` in `benchmark` writes them), plus `extra` string options."""
    p = argparse.ArgumentParser()
    for name, kind in (("arch", str), ("image-size", int), ("batch", int), ("steps", int), ("warmup", int),
                       ("classes", int), ("threads", int), *((e, str) for e in extra)):  # fmt: skip
        p.add_argument(f"--{name}", type=kind, required=True)
    p.add_argument("--unfused-adamw", action="store_true")
    return p.parse_args(argv)


def bare_child(argv: list[str]) -> int:
    a = _loop_args(argv)
    r = bare_loop(
        a.arch, a.image_size, a.batch, a.steps, a.warmup, a.classes, a.threads, fused=not a.unfused_adamw
    )
    print("[bench] bare " + json.dumps(r), flush=True)
    return 0


def floor_child(argv: list[str]) -> int:
    """Child process: the bare loop as the train function of a one-worker Ray Train run on a local Ray started as
    ours starts it (`init_ray`: 2N logical CPUs, the dashboard) with the worker holding N of them. No Ray Data,
    no DeepSpeed: what Ray Train's own processes (controller, worker group, placement-group cleaner, ...) cost
    a loop that shares their cores."""
    a = _loop_args(argv, "out")

    import ray
    import ray.train
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from system.config import load_config
    from system.runtime.cluster import init_ray

    init_ray(load_config(None, {"ray.num_cpus": 2 * a.threads}))
    args = (a.arch, a.image_size, a.batch, a.steps, a.warmup, a.classes, a.threads)
    fused, out = not a.unfused_adamw, a.out

    def train_fn(_config: dict) -> None:
        r = bare_loop(*args, fused=fused)
        Path(out).write_text(json.dumps(r))  # local Ray: the worker shares this machine's filesystem

    TorchTrainer(
        train_fn,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": a.threads}),
        run_config=RunConfig(name="bench-floor", storage_path=str(Path(out).parent / "floor-ray")),
    ).fit()
    print("[bench] floor " + Path(out).read_text(), flush=True)
    ray.shutdown()
    return 0


def idle_child(argv: list[str]) -> int:
    """Child process: what idle Ray worker processes cost the bare loop on these cores. A local Ray started as
    ours is; the loop runs in this process, phases without and with `--actors` idle actors (num_cpus=0,
    created before and killed after each phase), in alternating order (ABBA) so the VM's drift cancels."""
    a = _loop_args(argv, "actors", "rounds")
    import ray
    import torch

    from system.config import load_config
    from system.runtime.cluster import init_ray

    torch.set_num_threads(a.threads)
    init_ray(load_config(None, {"ray.num_cpus": 2 * a.threads}))

    @ray.remote(num_cpus=0)
    class Idle:
        def ready(self) -> bool:
            return True

    step = bare_step(a.arch, a.image_size, a.batch, a.classes, fused=not a.unfused_adamw)
    timed_steps(step, a.batch, a.warmup)
    time.sleep(10)  # Ray's own start-up work (dashboard, agents) settles first
    actors, runs = int(a.actors), {"without": [], "with": []}
    for phase in (p for order in round_orders(int(a.rounds), ["without", "with"]) for p in order):
        group = [Idle.remote() for _ in range(actors if phase == "with" else 0)]
        ray.get([g.ready.remote() for g in group])
        time.sleep(2)
        runs[phase].append(timed_steps(step, a.batch, a.steps))
        for g in group:
            ray.kill(g)
        time.sleep(2)
        print(f"[bench] idle actors: {phase} {runs[phase][-1]:.1f} samples/s", flush=True)
    ray.shutdown()
    print("[bench] idle " + json.dumps(idle_actor_cost(runs["without"], runs["with"], actors)), flush=True)
    return 0


def idle_actor_cost(without: list[float], with_: list[float], actors: int) -> dict[str, Any]:
    """The loop's slowdown with `actors` idle Ray actors beside it, in all and per actor (means of the runs)."""
    base, loaded = sum(without) / len(without), sum(with_) / len(with_)
    slowdown = 1.0 - loaded / base
    return {
        "actors": actors,
        "without": round(base, 2),
        "with": round(loaded, 2),
        "runs_without": [round(r, 2) for r in without],
        "runs_with": [round(r, 2) for r in with_],
        "slowdown": round(slowdown, 4),
        "slowdown_per_actor": round(slowdown / max(actors, 1), 4),
    }


CHILDREN = {"bare": bare_child, "floor": floor_child, "idle": idle_child}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in CHILDREN:
        raise SystemExit(f"usage: python -m pipelines.bench.bare {{{'|'.join(CHILDREN)}}} ARGS")
    return CHILDREN[argv[0]](argv[1:])


if __name__ == "__main__":
    sys.exit(main())
