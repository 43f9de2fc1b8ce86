"""`uniproto export` and the model factory's local-file paths, on checkpoints the tests write."""

import json

import pytest
import torch
from safetensors.torch import load_file

from pipelines.cli import main
from system.model.factory import create_clip, load_state

ARCH = "uniproto-tiny-rn"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A stage-1 checkpoint as the train loop writes it: model.pt (bf16 here, as on GPU) + meta.json."""
    d = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = create_clip(ARCH, None, 32)
    state = {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in model.state_dict().items()}
    torch.save(state, d / "model.pt")
    (d / "meta.json").write_text(json.dumps({"epoch": 3, "step": 21, "arch": ARCH, "image_size": 32}))
    return d, state


def test_export_writes_fp32_safetensors_that_load_everywhere(checkpoint, tmp_path, capsys):
    d, state = checkpoint
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(d), "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["out"] == str(out) and summary["tensors"] == len(state)
    assert summary["metadata"]["arch"] == ARCH and summary["metadata"]["step"] == "21"
    tensors = load_file(str(out))
    assert set(tensors) == set(state)
    for k, v in state.items():
        if v.is_floating_point():
            assert tensors[k].dtype == torch.float32
            assert torch.equal(tensors[k], v.float())  # bf16 -> fp32 is exact
    # ... through our loader and through open_clip's (model.pretrained, the teacher's path): same weights
    ours = load_state(create_clip(ARCH, None, 32), out)
    theirs = create_clip(ARCH, str(out), 32)
    for (k, a), (_, b) in zip(ours.state_dict().items(), theirs.state_dict().items(), strict=True):
        assert torch.equal(a, b), k
    assert torch.equal(ours.state_dict()["logit_scale"], state["logit_scale"].float())
    assert ours.state_dict()["logit_scale"].shape == (1,)  # scalars stay 1-element (DeepSpeed)


def test_export_from_run_dir_and_refusals(checkpoint, tmp_path, capsys):
    d, _ = checkpoint
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage1.json").write_text(json.dumps({"checkpoint": str(d)}))
    out = tmp_path / "a.safetensors"
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--out", str(out)]) == 2
    assert f"--out {out} exists" in capsys.readouterr().err
    assert main(["export", "--checkpoint", str(run), "--out", str(out), "--overwrite"]) == 0
    assert main(["export", "--checkpoint", str(tmp_path / "nothing"), "--out", str(out)]) == 2
    assert "neither a checkpoint directory" in capsys.readouterr().err


def test_pretrained_from_a_local_torch_file_and_missing_file(tmp_path):
    torch.manual_seed(1)
    src = create_clip(ARCH, None, 32)
    torch.save(src.state_dict(), tmp_path / "w.pt")
    loaded = create_clip(ARCH, str(tmp_path / "w.pt"), 32)
    assert all(
        torch.equal(a, b)
        for a, b in zip(src.state_dict().values(), loaded.state_dict().values(), strict=True)
    )
    with pytest.raises(FileNotFoundError, match="model.pretrained: checkpoint file not found"):
        create_clip(ARCH, str(tmp_path / "missing" / "w.pt"), 32)


def test_export_and_load_refuse_bad_inputs_by_name(checkpoint, tmp_path, capsys):
    import os

    from system.model.checkpoint import CheckpointError

    d, state = checkpoint
    out = tmp_path / "m.safetensors"
    assert main(["export", "--checkpoint", str(d), "--out", str(out)]) == 0
    capsys.readouterr()
    with pytest.raises(CheckpointError, match=r"m\.safetensors: written for arch=uniproto-tiny-rn, but"):
        load_state(create_clip("uniproto-tiny-vit", None, 32), out, arch="uniproto-tiny-vit", image_size=32)
    with pytest.raises(CheckpointError, match=r"written for image_size=32, but this run uses image_size=64"):
        load_state(create_clip(ARCH, None, 64), out, arch=ARCH, image_size=64)

    cases = {  # name: (model.pt content, what the one-line error says)
        "nan": (
            {k: (v.float().fill_(float("nan")) if k == "logit_scale" else v) for k, v in state.items()},
            "tensor logit_scale holds non-finite values",
        ),
        "payload": ({"module": _Payload(tmp_path / "ran")}, "not a readable weights file"),
        "garbage": (None, "not a readable weights file"),
        "not_tensors": ({"w": [1, 2, 3]}, "not a mapping of parameter names to tensors"),
    }
    for name, (content, says) in cases.items():
        bad = tmp_path / name
        bad.mkdir()
        if content is None:
            (bad / "model.pt").write_bytes(b"\x80\x04not a pickle at all")
        else:
            torch.save(content, bad / "model.pt")
        assert main(["export", "--checkpoint", str(bad), "--out", str(tmp_path / f"{name}.st")]) == 2
        err = capsys.readouterr().err
        assert f"{bad / 'model.pt'}: {says}" in err and "Traceback" not in err, (name, err)
    assert not (tmp_path / "ran").exists()  # the payload never ran
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage1.json").write_text("{not json")
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "x.st")]) == 2
    assert "stage1.json: no checkpoint path in it" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x.st")


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_frozen_teacher_and_its_logits(tmp_path):
    from system.config import config_from_dict
    from system.method.losses import Stage1Loss
    from system.method.stage1_step import Stage1Step
    from system.model.factory import preprocess_for, tokenizer_for
    from system.runtime.pretrain import frozen_teacher

    torch.manual_seed(2)
    torch.save(create_clip(ARCH, None, 32).state_dict(), tmp_path / "t.pt")
    cfg = config_from_dict(
        {},
        {
            "model.arch": ARCH,
            "model.pretrained": str(tmp_path / "t.pt"),
            "loss.distill_weight": 0.5,
            "data.image_size": 32,
        },
    )
    teacher = frozen_teacher(cfg, "cpu")
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    student = create_clip(ARCH, None, 32)
    step = Stage1Step(student, student, Stage1Loss(None), preprocess_for(student), "fp32", teacher)
    images = torch.randn(3, 3, 32, 32)
    text = tokenizer_for(ARCH)(["a red circle", "a blue square", "a green star"])
    i2t, t2i = step.teacher_logits(images, text)  # one process: rows = columns = the batch, [b, b] each
    out = teacher(images, text)
    expected = out["logit_scale"] * out["image_features"] @ out["text_features"].T
    assert i2t.shape == (3, 3) and torch.allclose(i2t, expected) and not i2t.requires_grad
    assert torch.allclose(t2i, expected.T)  # text -> image: the text rows against every image


def test_feature_encoder_takes_read_only_batches_without_a_warning(tmp_path):
    """Stage 2's encoder actor gets Arrow's read-only buffers: same features as a writable copy, no warning."""
    import warnings

    import numpy as np
    import torch

    from system.model.factory import create_clip
    from system.runtime.features import FeatureEncoder

    torch.manual_seed(0)
    enc = FeatureEncoder("uniproto-tiny-rn", 32, [create_clip("uniproto-tiny-rn", None, 32).state_dict()])
    images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)  # [N, S, S, 3]
    frozen = images.copy()
    frozen.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = enc({"image": frozen, "label": np.arange(3)})
    ref = enc({"image": images, "label": np.arange(3)})
    assert out["feature"].shape[0] == 3
    np.testing.assert_allclose(out["feature"], ref["feature"], rtol=0, atol=0)
    np.testing.assert_allclose(np.linalg.norm(out["feature"], axis=1), 1.0, atol=1e-5)


def test_a_checkpoint_on_s3_exports_and_reads_as_a_local_copy(checkpoint, moto_s3, tmp_path, capsys):
    """With ray.storage_path on an object store, stage1.json records the checkpoint's URL: export and finetune
    read its model.pt and meta.json through a temporary local copy, never its DeepSpeed shards."""
    from system.model.export import checkpoint_location, local_checkpoint

    d, state = checkpoint
    prefix = "uniproto/runs/r-stage1/checkpoint_000002"
    url = f"s3://{prefix}"
    for name in ("model.pt", "meta.json"):
        with moto_s3.open_output_stream(f"{prefix}/{name}") as f:
            f.write((d / name).read_bytes())
    with moto_s3.open_output_stream(f"{prefix}/global_step21/mp_rank_00_model_states.pt") as f:
        f.write(b"a DeepSpeed shard: never downloaded")
    run = tmp_path / "run"
    run.mkdir()
    (run / "stage1.json").write_text(json.dumps({"checkpoint": url + "/"}))
    assert checkpoint_location(run) == url

    with local_checkpoint(run) as local:
        assert sorted(p.name for p in local.iterdir()) == ["meta.json", "model.pt"]
        assert (local / "model.pt").read_bytes() == (d / "model.pt").read_bytes()
    assert not local.exists()  # the copy is gone on exit

    for given in (run, url):
        out = tmp_path / f"{len(str(given))}.safetensors"
        assert main(["export", "--checkpoint", str(given), "--out", str(out)]) == 0
        summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert summary["checkpoint"] == url and summary["metadata"]["step"] == "21"
        tensors = load_file(str(out))
        assert all(torch.equal(tensors[k], v.float()) for k, v in state.items() if v.is_floating_point())

    # Refusals name the object: no model.pt under the URL; a corrupt one (as stored, not its local copy).
    (run / "stage1.json").write_text(json.dumps({"checkpoint": "s3://uniproto/runs/r-stage1/checkpoint_9"}))
    assert main(["export", "--checkpoint", str(run), "--out", str(tmp_path / "x.st")]) == 2
    assert "s3://uniproto/runs/r-stage1/checkpoint_9/model.pt: no such file" in capsys.readouterr().err
    with moto_s3.open_output_stream("uniproto/runs/bad/model.pt") as f:
        f.write(b"\x80\x04not a pickle at all")
    assert main(["export", "--checkpoint", "s3://uniproto/runs/bad", "--out", str(tmp_path / "y.st")]) == 2
    err = capsys.readouterr().err
    assert "s3://uniproto/runs/bad/model.pt: not a readable weights file" in err and "Traceback" not in err


def test_a_local_only_reader_names_the_remote_checkpoint_and_the_way_out(tmp_path):
    from system.model.checkpoint import CheckpointError
    from system.model.export import find_checkpoint

    (tmp_path / "stage1.json").write_text(json.dumps({"checkpoint": "gs://b/runs/r-stage1/checkpoint_3"}))
    with pytest.raises(
        CheckpointError, match=r"gs://b/runs/r-stage1/checkpoint_3 is on an object store.*export"
    ):
        find_checkpoint(tmp_path)
    (tmp_path / "stage1.json").write_text(json.dumps({"checkpoint": ["not", "a", "path"]}))
    with pytest.raises(CheckpointError, match="stage1.json: no checkpoint path in it"):
        find_checkpoint(tmp_path)
