"""What a stage-1 epoch measures on each Train worker, reduced over the ranks: the loss terms, throughput and
data wait (`EpochMeter`), and the val probe (`StageOneProbe`: leave-one-out class-mean and zero-shot top-1 on a
fixed subset of the selection split). system.runtime.pretrain reports them at every epoch end.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import ray
import torch

from system.method.heads import ClassMeanAccumulator, leave_one_out_class_mean_predictions
from system.method.stage1_step import StepResult, autocast


def all_reduce(t: torch.Tensor) -> torch.Tensor:
    """Sum over ranks. NCCL reduces only GPU tensors, gloo CPU ones: go through the backend's device."""
    if not torch.distributed.is_initialized():
        return t
    device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
    out = t.to(device)
    torch.distributed.all_reduce(out)
    return out.to(t.device)


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum a few numbers over ranks, in float64."""
    return all_reduce(torch.tensor(values, dtype=torch.float64)).tolist()


class StageOneProbe:
    """A fixed subset of the selection split scored after every epoch: leave-one-out class-mean top-1 (the
    per-epoch sweep metric) and zero-shot top-1 against the class-name prompts.

    Each rank embeds its slice; class sums and correct counts are summed over ranks. The encoders run under the
    training's autocast. Every rank runs the same number of forward passes (ZeRO-3 gathers parameters
    collectively per forward), and under ZeRO-3 the root module's own parameters (text projection, positional
    embedding), which `encode_text` reads outside any submodule's forward, are gathered around the probe.
    """

    BATCH = 256

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        tokens: torch.Tensor,
        preprocess,
        device,
        batches: int,
        precision: str = "fp32",
    ):
        self.images, self.labels = images, labels  # [n, 3, S, S] uint8, [n] int64: this rank's slice
        self.tokens = tokens  # [K, L] class-name prompts
        self.preprocess, self.device, self.batches, self.precision = preprocess, device, batches, precision

    @classmethod
    def build(
        cls,
        loop_config: dict[str, Any],
        arch: str,
        preprocess,
        device,
        rank: int,
        world: int,
        precision: str = "fp32",
    ):
        if loop_config.get("probe_ref") is None:
            return None
        from system.model.factory import tokenizer_for
        from system.text.filter import PROMPT_TEMPLATES

        data = ray.get(loop_config["probe_ref"])
        per_rank = -(-len(data["label"]) // world)  # ceil, so every rank plans the same batch count
        rows = slice(rank * per_rank, (rank + 1) * per_rank)
        prompts = [PROMPT_TEMPLATES[0].format(name=n) for n in loop_config["class_names"]]
        tokens = tokenizer_for(arch)(prompts)
        return cls(
            data["image"][rows],
            data["label"][rows],
            tokens,
            preprocess,
            device,
            -(-per_rank // cls.BATCH),
            precision,
        )

    @torch.no_grad()
    def evaluate(self, model: torch.nn.Module, num_classes: int) -> dict[str, float]:
        """Zero-shot and leave-one-out class-mean top-1 (%) over every rank's slice, and the sample count."""
        was_training = model.training
        model.eval()
        with _root_params_gathered(model), autocast(self.precision, self.device):
            text = model.encode_text(self.tokens.to(self.device), normalize=True).float()  # [K, d]
            feats = []
            for j in range(self.batches):
                images = self.images[j * self.BATCH : (j + 1) * self.BATCH]
                n = len(images)
                if n == 0:  # this rank ran out: a dummy forward keeps the ranks' forward counts equal
                    images = np.zeros((1, *self.images.shape[1:]), np.uint8)
                x = self.preprocess(
                    torch.from_numpy(np.ascontiguousarray(images)).to(self.device)
                )  # [b, 3, S, S]
                feats.append(model.encode_image(x, normalize=True)[:n].float().cpu())  # [n, d]
        model.train(was_training)
        f = torch.cat(feats) if feats else torch.zeros(0, text.shape[1])  # [n, d]
        y = torch.from_numpy(self.labels).long()  # [n]
        zs_correct = float(((f @ text.cpu().T).argmax(dim=1) == y).sum()) if len(y) else 0.0
        # Class sums over all ranks, then every rank scores its own samples leave-one-out.
        acc = ClassMeanAccumulator(num_classes, f.shape[1]).update(f, y)
        sums, counts = all_reduce(acc.sums), all_reduce(acc.counts.double())  # [K, d], [K]
        ncm_correct = (
            float((leave_one_out_class_mean_predictions(f, y, sums, counts) == y).sum()) if len(y) else 0.0
        )
        zs, ncm, seen = all_reduce_sum([zs_correct, ncm_correct, float(len(y))])
        return {
            "val_ncm_top1": 100.0 * ncm / max(seen, 1.0),
            "val_zs_top1": 100.0 * zs / max(seen, 1.0),
            "val_probe_samples": int(seen),
        }


def _root_params_gathered(model: torch.nn.Module):
    """Under ZeRO-3, gather the parameters the root module owns directly (its submodules fetch their own in
    their forward hooks); a no-op otherwise."""
    import contextlib

    own = [p for p in model.parameters(recurse=False) if hasattr(p, "ds_id")]
    if not own:
        return contextlib.nullcontext()
    import deepspeed

    return deepspeed.zero.GatheredParameters(own, modifier_rank=None)


class EpochMeter:
    """Per-epoch sums on one rank: loss terms, samples, steps, time blocked on data, wall time.

    The loss terms are summed on the device and read once per epoch (`reduce`): reading them every step would
    make the host wait for the device at each micro-step.
    """

    def __init__(self, resumed_from_step: int = 0) -> None:
        self.resumed_from_step = resumed_from_step
        self.reset()

    def reset(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.logit_scale: torch.Tensor | None = None  # [1], the last step's
        self.samples, self.steps, self.wait_s = 0, 0, 0.0
        self.t0 = time.perf_counter()

    def wait(self, seconds: float) -> None:
        self.wait_s += seconds

    def add(self, result: StepResult, samples: int) -> None:
        for k, v in [*result.terms.items(), ("loss", result.loss)]:
            v = v.detach().reshape(())
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.logit_scale = result.logit_scale
        self.samples += samples
        self.steps += 1

    def reduce(self, world: int) -> dict[str, float]:
        """Metrics over all ranks (only rank 0's report survives in Ray, so reduce before reporting)."""
        keys = sorted(self.sums)
        elapsed = time.perf_counter() - self.t0
        local = [float(v) for v in torch.stack([self.sums[k] for k in keys]).double().cpu()] if keys else []
        vals = all_reduce_sum(local + [self.steps, self.samples, self.wait_s, elapsed])
        steps, samples, wait_s, elapsed_sum = vals[-4:]
        out = {k: v / max(steps, 1) for k, v in zip(keys, vals[: len(keys)], strict=True)}
        out.update(
            samples=int(samples),
            samples_per_s=samples / max(elapsed_sum / world, 1e-9),
            samples_per_s_per_worker=samples / max(elapsed_sum, 1e-9),
            data_wait_fraction=wait_s / max(elapsed_sum, 1e-9),
            epoch_s=elapsed_sum / world,
        )
        if self.logit_scale is not None:
            out["logit_scale"] = float(self.logit_scale.reshape(-1)[0])
        return out
