"""`uniproto benchmark data`: the throughput dataset, the steady-state and CPU arithmetic, and (integration) the
whole benchmark on tiny shards with its JSON last line."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.bench import data as bench_data
from pipelines.bench.data import cpu_delta, main, memory_scaling, steady_state
from pipelines.bench.inputs import resolve
from system.data.dataset_dir import iter_shard_samples, load_manifest


@pytest.fixture(scope="module")
def photo_shards(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bench") / "photos"
    rc = main(
        ["--make-shards", str(root), "--samples", "240", "--sizes", "40,72", "--per-shard", "30", "--json"]
    )
    assert rc == 0
    return root


def test_make_shards_output_loads(photo_shards, capsys):
    m = load_manifest(photo_shards)
    paths = m.shard_paths(photo_shards, "train")
    assert len(paths) == 8 and m.splits["train"].num_samples == 240 == sum(m.train_counts)
    assert m.text_dir is None and len(m.class_names) == 24
    samples = list(iter_shard_samples(paths))
    assert len(samples) == 240
    counts = np.bincount([s["json"]["label"] for s in samples], minlength=24)
    assert counts.tolist() == m.train_counts
    assert counts[0] > counts[-1]  # long-tailed
    for s in samples[:20]:
        with Image.open(io.BytesIO(s["jpg"])) as im:
            assert im.format == "JPEG" and 40 <= min(im.size) and max(im.size) <= 72
            assert im.size == (s["json"]["width"], s["json"]["height"])
        assert s["json"]["class_name"] in s["txt"]


def test_resolve_dataset_dir_and_raw_pattern(photo_shards, tmp_path):
    root, paths, n = resolve(str(photo_shards), tmp_path)
    assert Path(root) == photo_shards and len(paths) == 8 and n == 240
    # A raw brace pattern gets a scanned train-only manifest in the work dir.
    root2, paths2, n2 = resolve(f"{photo_shards}/train/{{00000..00001}}.tar", tmp_path)
    assert Path(root2) == tmp_path / "dataset" and len(paths2) == 2 and n2 == 60
    assert len(load_manifest(root2).class_names) <= 24


def test_cpu_delta_counts_new_processes_from_zero():
    before = {1: 10.0, 2: 3.0}
    after = {1: 12.5, 2: 3.0, 3: 0.75}  # pid 3 started inside the window
    assert cpu_delta(before, after) == pytest.approx(2.5 + 0.0 + 0.75)


def test_steady_state_excludes_warmup_batches():
    batches = [{"label": np.zeros(n)} for n in (64, 64, 64, 32, 16, 8)]
    r = steady_state(iter(batches), warmup=2, limit=3)
    # Batches 3, 4, 5 are timed (64 + 32 + 16); the 2nd closes the warm-up, the 6th is never pulled.
    assert r["images"] == 112 and r["batches"] == 3
    assert r["images_per_s"] > 0 and r["cpu_s_per_1k"] == pytest.approx(1000 * r["cpu_s"] / 112)
    assert steady_state(iter(batches), warmup=2, limit=None)["images"] == 64 + 32 + 16 + 8
    with pytest.raises(RuntimeError, match="within the 7 warm-up batches"):
        steady_state(iter(batches), warmup=7, limit=1)


def test_memory_scaling_reports_both_sizes(monkeypatch, tmp_path):
    calls = []

    def fake_run(which, spec, cpus, work, tag, verbose):
        calls.append((which, spec["epochs"], spec["batches"], tag))
        return {"images": 100 * spec["epochs"] - spec["batch"], "peak_rss_mb": 500.0 + spec["epochs"],
                "images_per_s": 10.0, "wall_s": 1.0}  # fmt: skip

    monkeypatch.setattr(bench_data, "_run", fake_run)
    out = memory_scaling(
        {"batch": 10, "epochs": 3, "batches": 5}, 10, [0], tmp_path, False, 100, say=lambda s: None
    )
    assert calls == [
        ("ours", 1, 0, "ours-x1"),
        ("ours", 10, 0, "ours-x10"),
    ]  # to the end, 1x then 10x the list
    assert out["x1"]["images"] == 100 and out["x10"]["images"] == 1000
    assert out["rss_growth"] == pytest.approx(round(510 / 501, 3))


def test_rounds_alternate_and_figures_are_means(monkeypatch, photo_shards, tmp_path):
    """--repeats 3 runs peer, ours | ours, peer | peer, ours; images/s and CPU-s are means over the runs, peak
    RSS the largest, the ratio that of the means, and each round has its own ratio."""
    calls = []
    tags = ["peer-1", "ours-1", "ours-2", "peer-2", "peer-3", "ours-3"]
    speeds = dict(zip(tags, [100.0, 90.0, 120.0, 80.0, 120.0, 150.0], strict=True))

    def fake_run(which, spec, cpus, work, tag, verbose):
        calls.append(tag)
        return {"images_per_s": speeds[tag], "images": 64, "seconds": 1.0, "cpu_s_per_1k": speeds[tag] / 100,
                "peak_rss_mb": speeds[tag] * 10, "wall_s": 2.0, "cpu_s": 3.0, "load_before": [0.0] * 3,
                "load_after": [0.0] * 3}  # fmt: skip

    monkeypatch.setattr(bench_data, "_run", fake_run)
    a = bench_data.parse_args(["--shards", str(photo_shards), "--cpus", "1", "--repeats", "3",
                               "--workdir", str(tmp_path)])  # fmt: skip
    r = bench_data.benchmark(a, say=lambda s: None)
    assert calls == ["peer-1", "ours-1", "ours-2", "peer-2", "peer-3", "ours-3"]
    assert r["ours"] == pytest.approx(120.0) and r["peer"] == pytest.approx(100.0)
    assert r["ratio"] == pytest.approx(1.2) and r["ratio_runs"] == [0.9, 1.5, 1.25]
    assert r["ours_runs"] == [90.0, 120.0, 150.0] and r["ours_spread"] == pytest.approx(0.5)
    assert r["cpu_s_per_1k"] == {"ours": 1.2, "peer": 1.0}
    assert r["peak_rss_mb"] == {"ours": 1500, "peer": 1200}
    assert len(r["ours_detail"]) == 3 and r["repeats"] == 3
    with pytest.raises(SystemExit):
        bench_data.parse_args(["--shards", "x", "--repeats", "0"])


@pytest.mark.integration
@pytest.mark.timeout(240)
def test_benchmark_end_to_end_json_last_line(photo_shards, capsys):
    rc = main(
        ["--shards", str(photo_shards), "--cpus", "1", "--batch", "16", "--batches", "4", "--warmup", "2",
         "--image-size", "32", "--repeats", "1"]
    )  # fmt: skip
    assert rc == 0
    lines = capsys.readouterr().out.strip().splitlines()
    result = json.loads(lines[-1])
    assert result["ours"] > 0 and result["peer"] > 0
    assert result["ratio"] == pytest.approx(result["ours"] / result["peer"], abs=2e-3)
    for side in ("ours", "peer"):
        # 4 tiny timed batches can fit inside one CPU clock tick (a prefetching side then shows 0.0 CPU-s)
        assert result["cpu_s_per_1k"][side] >= 0 and result["peak_rss_mb"][side] > 0
        assert result[f"{side}_detail"][0]["images"] == 4 * 16  # four full batches after the warm-up
    assert result["cpus"] == 1 and result["batch"] == 16 and result["shards"] == 8
    assert any(line.startswith("[bench] ours (Ray Data") for line in lines)
