"""Shared fixtures. Ray in tests: enough logical CPUs, a short no-progress timeout (a starved pipeline fails in
two minutes instead of hanging CI), and a per-test timeout from pyproject's pytest-timeout settings."""

import os
import socket

import pytest

os.environ.setdefault("RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S", "120")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _ray_only_in_integration_tests(request, monkeypatch):
    """`make test-fast` deselects the `integration` tests and must start no Ray: a test that calls ray.init
    without the marker fails, naming the fix."""
    if request.node.get_closest_marker("integration") is not None:
        return
    import ray

    def refuse(*args, **kwargs):
        raise RuntimeError("this test starts Ray: mark it @pytest.mark.integration")

    monkeypatch.setattr(ray, "init", refuse)


def pipeline_argv(sets: dict, *extra: str, config: str = "pipelines/configs/demo.yaml") -> list[str]:
    """The argv of a pipeline's main(): --config, then `extra` flags, then one --set per entry of `sets`."""
    out = ["--config", config, *extra]
    for key, value in sets.items():
        out += ["--set", f"{key}={value}"]
    return out


@pytest.fixture
def argv():
    return pipeline_argv


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """6 classes, 120 -> 3 train images (many, medium and few groups all present), 32 px, small shards."""
    from system.data.demo_data import make_demo_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    make_demo_dataset(
        str(root),
        num_classes=6,
        imbalance=40.0,
        n_max=120,
        val_per_class=8,
        test_per_class=10,
        image_size=32,
        seed=3,
        samples_per_shard=40,
        progress=None,
    )
    return root


def one_rank_deepspeed_env(repo) -> dict:
    """The environment of a child process that runs one DeepSpeed rank on CPU (gloo on a free loopback port), with
    the repository importable: DeepSpeed's process group stays out of the test process."""
    return dict(
        os.environ, DS_ACCELERATOR="cpu", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
        RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", PYTHONPATH=str(repo),
    )  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def moto_s3():
    """A moto S3 server on 127.0.0.1 with an empty bucket `uniproto`; AWS_* point at it (fake keys). Yields
    pyarrow's S3 filesystem on it."""
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(
        endpoint_override=f"127.0.0.1:{port}", scheme="http", region="us-east-1", allow_bucket_creation=True
    )
    s3.create_dir("uniproto")
    try:
        yield s3
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def s3_dataset(tiny_dataset, moto_s3):
    """The tiny dataset uploaded to the moto bucket, as an s3:// URI."""
    import pyarrow.fs as pafs

    pafs.copy_files(
        str(tiny_dataset),
        "uniproto/ds",
        source_filesystem=pafs.LocalFileSystem(),
        destination_filesystem=moto_s3,
    )
    return "s3://uniproto/ds"
