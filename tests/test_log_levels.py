"""Quiet logs by default, everything with run.verbose (system.log_levels)."""

import logging
import os
import sys

import pytest

from system import log_levels
from system.config import load_config


@pytest.fixture
def clean_logging(monkeypatch):
    """Restore the loggers, root filters and warning filters this module touches."""
    import warnings

    root, data = logging.getLogger(), logging.getLogger("ray.data")
    filters, data_filters = list(root.filters), list(data.filters)
    levels = {n: logging.getLogger(n).level for n in log_levels.QUIET_LOGGERS + log_levels.ERROR_ONLY_LOGGERS}
    monkeypatch.delenv(log_levels.VERBOSE_ENV, raising=False)
    with warnings.catch_warnings():
        yield
    root.filters[:] = filters
    data.filters[:] = data_filters
    for n, level in levels.items():
        logging.getLogger(n).setLevel(level)


def _record(pathname: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("root", level, pathname, 1, "message", None, None)


def test_quiet_drops_library_info_and_keeps_warnings(clean_logging):
    log_levels.quiet_third_party_logs(False)
    assert os.environ[log_levels.VERBOSE_ENV] == "0"
    for name in log_levels.QUIET_LOGGERS:
        assert logging.getLogger(name).level == logging.WARNING
    assert logging.getLogger("torch.utils.cpp_extension").level == logging.ERROR
    root = logging.getLogger()
    open_clip_file = os.path.join("site-packages", "open_clip", "factory.py")
    assert not root.filter(_record(open_clip_file, logging.INFO))  # open_clip's model-building line
    assert root.filter(_record(open_clip_file, logging.WARNING))
    assert root.filter(_record(os.path.join("system", "runtime", "sweep.py"), logging.INFO))  # ours
    expected = _record(open_clip_file, logging.WARNING)
    expected.msg = "No pretrained weights loaded for model 'uniproto-tiny-rn'. Model initialized randomly."
    assert not root.filter(expected)  # what stage 2 does on purpose: it loads the weights next
    assert any(isinstance(f, log_levels.DropLibraryInfo) for f in logging.getLogger("ray.data").filters)
    log_levels.quiet_third_party_logs(False)  # idempotent: one filter
    assert sum(isinstance(f, log_levels.DropLibraryInfo) for f in root.filters) == 1


def test_verbose_changes_nothing_and_is_passed_on(clean_logging):
    before = {n: logging.getLogger(n).level for n in log_levels.QUIET_LOGGERS}
    log_levels.quiet_third_party_logs(True)
    assert os.environ[log_levels.VERBOSE_ENV] == "1" and log_levels.verbose_from_env()
    assert {n: logging.getLogger(n).level for n in log_levels.QUIET_LOGGERS} == before
    log_levels.quiet_third_party_logs(None)  # None reads the environment: still verbose
    assert {n: logging.getLogger(n).level for n in log_levels.QUIET_LOGGERS} == before


def test_the_flag_and_the_key():
    from pipelines.common import parse_args

    args = parse_args("x", None, ["--verbose", "--set", "train.epochs=2"])
    cfg = load_config(None, args.set)
    assert cfg.run.verbose is True and cfg.train.epochs == 2
    assert load_config(None, []).run.verbose is False
    assert parse_args("x", None, []).set == []


def test_local_workers_get_the_hook_and_ray_datas_quiet_config():
    from system.runtime.cluster import RAY_DATA_LOGGING, local_runtime_env

    quiet = local_runtime_env(load_config(None, []), 8265)
    assert quiet["worker_process_setup_hook"] == "system.runtime.cluster.quiet_worker"
    assert quiet["env_vars"][log_levels.VERBOSE_ENV] == "0"
    assert (
        quiet["env_vars"]["RAY_DATA_LOGGING_CONFIG"] == str(RAY_DATA_LOGGING) and RAY_DATA_LOGGING.is_file()
    )
    loud = local_runtime_env(load_config(None, ["run.verbose=true"]), 8265)
    assert (
        loud["env_vars"][log_levels.VERBOSE_ENV] == "1" and "RAY_DATA_LOGGING_CONFIG" not in loud["env_vars"]
    )
    import yaml

    cfg = yaml.safe_load(RAY_DATA_LOGGING.read_text())  # Ray Data's own layout, the console at WARNING
    assert cfg["handlers"]["console"]["level"] == "WARNING" and cfg["loggers"]["ray.data"]["level"] == "DEBUG"


def test_expected_prints_are_dropped_and_every_other_line_kept(capsys):
    with log_levels.drop_expected_prints(verbose=False):
        print("DeepSpeed shm_comm_op built successfully")
        print("[stage1] epoch 1/2 step 3/6 loss=1.000")
        sys.stdout.write("a line in ")
        sys.stdout.write("two writes\nDeepSpeed x built successfully\nunfinished")
    out = capsys.readouterr().out
    assert out == "[stage1] epoch 1/2 step 3/6 loss=1.000\na line in two writes\nunfinished"
    with log_levels.drop_expected_prints(verbose=True):
        print("DeepSpeed shm_comm_op built successfully")
    assert capsys.readouterr().out == "DeepSpeed shm_comm_op built successfully\n"


def test_tune_console_picks_the_silent_engine_for_the_block_only(monkeypatch):
    monkeypatch.delenv(log_levels.TUNE_OUTPUT_ENV, raising=False)
    with log_levels.tune_console(verbose=False):
        assert os.environ[log_levels.TUNE_OUTPUT_ENV] == "0"
    assert log_levels.TUNE_OUTPUT_ENV not in os.environ
    monkeypatch.setenv(log_levels.TUNE_OUTPUT_ENV, "1")
    with log_levels.tune_console(verbose=False):
        assert os.environ[log_levels.TUNE_OUTPUT_ENV] == "0"
    assert os.environ[log_levels.TUNE_OUTPUT_ENV] == "1"
    with log_levels.tune_console(verbose=True):
        assert os.environ[log_levels.TUNE_OUTPUT_ENV] == "1"
