"""`uniproto submit` without a cluster: what it refuses (naming the key) before anything leaves this machine, the
paths it rewrites or refuses for local and remote clusters, its id / hash / metadata, how it finds the Ray token,
and the security rules the code base keeps (no secrets in jobs, weights-only checkpoint loading, the dashboard on
loopback). The submission itself against a real Ray head is tests/e2e/test_submit_ray_head.py."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.cli import STAGES
from pipelines.submit import main as submit_main
from system.config import ConfigError, load_config
from system.launch.client import is_loopback, resolve_address
from system.launch.plan import (
    SubmitError,
    assert_no_secrets,
    cluster_path_overrides,
    git_info,
    load_runtime_env_file,
    plan_job,
)

REPO = Path(__file__).resolve().parents[2]
DEMO = "pipelines/configs/demo.yaml"
EXCLUDES = ["/runs/", "/.venv/", "/.git/"]


def main(argv: list[str]) -> int:
    """`uniproto submit ...` with the console script's stages."""
    return submit_main(argv, stages=STAGES)


def test_submit_is_a_uniproto_command():
    tree = ast.parse((REPO / "pipelines" / "cli.py").read_text())
    registry = next(
        n.value
        for n in tree.body
        if isinstance(n, ast.AnnAssign) and getattr(n.target, "id", "") == "COMMANDS" and n.value is not None
    )
    assert "submit" in [k.value for k in registry.keys]


def test_stages_are_pipeline_modules_with_main():
    """Every stage the console script hands to `uniproto submit` is a module of pipelines/ with a `main`, run
    as `python -m` by the job; the pipelines' shared code is none."""
    assert {"run", "sweep", "ablate", "pretrain", "finetune"} <= set(STAGES) and "common" not in STAGES
    for stage, module in STAGES.items():
        assert module == f"pipelines.{stage}"
        tree = ast.parse((REPO / "pipelines" / f"{stage}.py").read_text())
        assert any(isinstance(n, ast.FunctionDef) and n.name == "main" for n in tree.body), stage


def test_address_resolution(monkeypatch):
    for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS"):
        monkeypatch.delenv(k, raising=False)
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.7:8265")
    assert resolve_address(None) == "http://10.0.0.7:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "https://head.internal:8443/")
    assert resolve_address(None) == "https://head.internal:8443"
    assert resolve_address("http://127.0.0.1:9999") == "http://127.0.0.1:9999"  # --address wins
    with pytest.raises(SubmitError, match="Ray Client address"):
        resolve_address("ray://head:10001")
    assert is_loopback("http://localhost:8265") and is_loopback("http://127.0.0.1:1")
    assert not is_loopback("http://10.0.0.7:8265")


def _plan(sets, local=True, **kw):
    return plan_job("run", DEMO, list(sets), stages=STAGES, workdir=REPO, local=local, cwd=REPO, **kw)


def test_id_hash_and_metadata(tiny_dataset):
    sets = [f"data.root={tiny_dataset}", "run.name=exp1", "sweep.space=null"]
    a, cfg = _plan(sets)
    b, _ = _plan(sets)
    assert a.submission_id == b.submission_id and a.config_hash == b.config_hash
    assert re.fullmatch(r"uniproto-run-exp1-[0-9a-f]{10}", a.submission_id)
    assert a.submission_id.endswith(a.config_hash[:10]) and len(a.config_hash) == 64
    c, _ = _plan(sets + ["train.steps=30"])
    assert c.config_hash != a.config_hash  # any value change is a different job
    assert set(a.metadata) == {
        "uniproto_stage",
        "uniproto_run_name",
        "uniproto_config",
        "uniproto_config_hash",
        "uniproto_git_commit",
        "uniproto_git_dirty",
    }
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True)
    assert a.metadata["uniproto_git_commit"] == (commit.stdout.strip() or "unknown")
    assert a.metadata["uniproto_config_hash"] == a.config_hash and a.metadata["uniproto_run_name"] == "exp1"
    assert git_info(Path("/")) == {"git_commit": "unknown", "git_dirty": "unknown"}
    # The entrypoint is the module form `ray job submit` uses, every override quoted, with the config path as it
    # lies in the uploaded working dir; the runtime_env uploads the repo minus the excludes.
    assert a.entrypoint.startswith(f"python -m pipelines.run --config {DEMO} --set ")
    assert f"data.root={tiny_dataset}" in a.entrypoint
    assert a.runtime_env["working_dir"] == str(REPO) and "/runs/" in a.runtime_env["excludes"]
    assert "pip" not in a.runtime_env  # a local cluster runs from this venv
    remote, _ = _plan(
        sets + ["run.output_dir=/mnt/shared/runs", "ray.storage_path=s3://bucket/uniproto"], local=False
    )
    assert remote.runtime_env["pip"]["packages"]  # a remote cluster gets the pinned stack


def test_local_cluster_paths_become_absolute(tiny_dataset):
    sets = ["data.root=data", "ray.storage_path=store", "model.pretrained=ckpt/model.pt"]
    cfg = load_config(REPO / DEMO, sets + [f"sweep.space={REPO / 'tune_spaces' / 'demo.yaml'}"])
    ckpt = tiny_dataset.parent / "ckpt" / "model.pt"
    ckpt.parent.mkdir(exist_ok=True)
    ckpt.write_bytes(b"")
    out = cluster_path_overrides(cfg, local=True, workdir=REPO, cwd=tiny_dataset.parent, excludes=EXCLUDES)
    assert out["data.root"] == str(tiny_dataset)
    assert out["run.output_dir"] == str(tiny_dataset.parent / "runs")
    assert out["ray.storage_path"] == str(tiny_dataset.parent / "store")
    assert out["model.pretrained"] == str(ckpt)
    assert out["sweep.space"] == "tune_spaces/demo.yaml"  # inside the working dir: relative, uploaded with it


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        ([], r"data\.root: 'runs/datasets/demo' is relative"),
        (["data.root=s3://bucket/data"], r"data\.root: .*not a URL"),
        (
            ["data.root=/nonexistent/data"],
            r"data\.root: .*not visible on this machine.*--no-local-data-check",
        ),
        (["data.root=/d", "run.output_dir=runs"], r"run\.output_dir: 'runs' is relative"),
        (["data.root=/d", "run.output_dir=/o"], r"ray\.storage_path: a cluster needs checkpoint storage"),
        (["data.root=/d", "run.output_dir=/o", "ray.storage_path=s3://AKIAX:pw@bucket/x"], r"credentials"),
        (["data.root=/d", "run.output_dir=/o", "ray.storage_path=ftp://host/x"], r"unsupported URL scheme"),
        (
            ["data.root=/d", "run.output_dir=/o", "ray.storage_path=relative/store"],
            r"ray\.storage_path: .*relative",
        ),
        (
            ["data.root=/d", "run.output_dir=/o", "ray.storage_path=/s", "sweep.space=/etc/hostname"],
            r"sweep\.space",
        ),
    ],
)
def test_remote_cluster_paths_are_refused_naming_the_key(sets, message):
    cfg = load_config(REPO / DEMO, sets)
    check = "/nonexistent/data" in " ".join(sets)
    with pytest.raises(ConfigError, match=message):
        cluster_path_overrides(cfg, local=False, workdir=REPO, cwd=REPO, excludes=EXCLUDES, check_data=check)


def test_refusals_exit_2_before_any_connection(tmp_path, capsys):
    dead = ["--address", "http://127.0.0.1:9"]  # nothing listens: reaching it would be a different error
    assert main(["run", "--config", DEMO, "--set", "train.zero_stage=7", *dead]) == 2
    assert "config error: " in (err := capsys.readouterr().err) and "train.zero_stage: must be <= 3" in err
    assert main(["run", "--config", DEMO, "--set", "train.epoch=2", *dead]) == 2
    assert "unknown config key train.epoch" in capsys.readouterr().err
    assert main(["nosuchstage", "--config", DEMO, *dead]) == 2
    assert "unknown stage 'nosuchstage'" in capsys.readouterr().err
    outside = tmp_path / "cfg.yaml"
    outside.write_text((REPO / DEMO).read_text())
    assert main(["run", "--config", str(outside), *dead]) == 2
    assert "not uploaded with the working directory" in capsys.readouterr().err
    # A config under runs/ (best.yaml of a sweep) stays home with runs/: refused with the way out.
    best = REPO / "runs" / "_submit_test_best.yaml"
    made_runs = not best.parent.exists()
    best.parent.mkdir(exist_ok=True)
    best.write_text((REPO / DEMO).read_text())
    try:
        assert main(["run", "--config", str(best), *dead]) == 2
        assert "copy it under pipelines/configs/" in capsys.readouterr().err
    finally:
        best.unlink()
        if made_runs:
            best.parent.rmdir()  # leave the checkout as it was


def test_dry_run_carries_no_secrets(tiny_dataset, monkeypatch, capsys):
    import uuid

    # made at run time: a value written in this file would be found in the upload (this file travels too)
    secret = f"fake-aws-secret-{uuid.uuid4().hex}"
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("HF_TOKEN", f"hf_fake{uuid.uuid4().hex}")
    argv = ["run", "--config", DEMO, "--set", f"data.root={tiny_dataset}", "--dry-run"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    plan = json.loads(out)
    assert secret not in out and "hf_fake" not in out
    from system.config import SECRET_NAME_RE

    assert not [k for k in plan["runtime_env"]["env_vars"] if SECRET_NAME_RE.search(k)]
    assert set(plan["runtime_env"]["env_vars"]) == set(
        load_runtime_env_file(REPO / "cluster" / "runtime_env.yaml")["env_vars"]
    )
    assert all(k.startswith("uniproto_") for k in plan["metadata"])
    # A secret's value that found its way into a value is refused, and the refusal does not print it.
    with pytest.raises(SubmitError, match=r"\$AWS_SECRET_ACCESS_KEY") as e:
        _plan([f"data.root={tiny_dataset}", f"run.output_dir=/tmp/{secret}"])
    assert secret not in str(e.value)


def test_no_credentials_inside_urls():
    from system.launch.plan import JobPlan

    plan = JobPlan("run", "id", "python -m x --set a=https://user:pw@host/x", {}, {}, "h", True)
    with pytest.raises(SubmitError, match="credentials inside a URL"):
        assert_no_secrets(plan, environ={})


def test_runtime_env_file_refuses_credentials(tmp_path):
    bad = tmp_path / "renv.yaml"
    bad.write_text("env_vars:\n  AWS_SECRET_ACCESS_KEY: abc\n")
    with pytest.raises(SubmitError, match=r"env_vars\.AWS_SECRET_ACCESS_KEY: looks like a credential"):
        load_runtime_env_file(bad)
    assert load_runtime_env_file(REPO / "cluster" / "runtime_env.yaml")["env_vars"]


_TOKEN_PROBE = """
import os, sys
from system.launch.client import enable_token_auth
from ray._private.authentication.http_token_authentication import get_auth_headers_if_auth_enabled
print(enable_token_auth())
print(sorted(get_auth_headers_if_auth_enabled({})))
"""


def _probe(**overrides):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")} | overrides
    return subprocess.run(
        [sys.executable, "-c", _TOKEN_PROBE], env=env, cwd=REPO, capture_output=True, text=True
    )


def test_token_is_found_where_ray_looks_and_never_printed(tmp_path):
    """In a fresh process: Ray 2.60's client sends the token only in token mode; submit switches it on when
    Ray's lookup finds a token (here ~/.ray/auth_token of a fresh HOME), and leaves a token-less setup alone."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    token = "0123456789abcdef" * 4
    (home / ".ray" / "auth_token").write_text(token)
    r = _probe(HOME=str(home))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split("\n")[:2] == ["~/.ray/auth_token", "['authorization']"]
    assert token not in r.stdout + r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = _probe(HOME=str(empty))
    assert r.stdout.split("\n")[:2] == ["none (cluster without token authentication)", "[]"], r.stderr
    r = _probe(HOME=str(empty), RAY_AUTH_TOKEN_PATH=str(empty / "missing"))
    assert r.returncode != 0 and "missing or empty token file" in r.stderr


# ------------------------------------------------------------------------------ code-base security rules


def _sources(*dirs: str) -> list[Path]:
    return [p for d in dirs for p in (REPO / d).rglob("*.py")]


def test_plain_http_beyond_loopback_is_refused_unless_asked_for(capsys):
    from system.launch.client import check_transport

    for ok in (
        "http://127.0.0.1:8265",
        "http://localhost:8265",
        "http://[::1]:8265",
        "https://10.0.0.5:8265",
    ):
        check_transport(ok)
    with pytest.raises(SubmitError, match=r"http://10\.0\.0\.5:8265 is plain http beyond loopback"):
        check_transport("http://10.0.0.5:8265")
    check_transport("http://10.0.0.5:8265", insecure_http=True)
    assert "--insecure-http" in capsys.readouterr().err
    # refused before any connection is tried, with exit 2 (nothing listens at that address)
    assert main(["status", "x", "--address", "http://192.0.2.1:9"]) == 2
    assert "plain http beyond loopback" in capsys.readouterr().err


def test_secret_values_are_found_in_escaped_forms():
    from system.launch.plan import JobPlan

    for value in ("p@ss\\word-0123", "pässwörd-0123456"):  # a backslash, non-ASCII: JSON escapes both
        plan = JobPlan("run", "id", "python -m x", {}, {}, "h", True, [f"run.name={value}"])
        with pytest.raises(SubmitError, match=r"\$DB_PASSWORD"):
            assert_no_secrets(plan, environ={"DB_PASSWORD": value})


def test_every_uploaded_file_is_scanned_and_credential_files_stay_home(tmp_path):
    from system.launch.plan import assert_upload_clean, uploaded_files

    work = tmp_path / "work"
    (work / "pipelines" / "configs").mkdir(parents=True)
    (work / ".rayignore").write_text((REPO / ".rayignore").read_text())
    excludes = load_runtime_env_file(REPO / "cluster" / "runtime_env.yaml")["excludes"]
    (work / "pipelines" / "configs" / "run.yaml").write_text("run:\n  name: exp\n")
    begin = "-----BEGIN OPENSSH " + "PRIVATE KEY-----"  # split: this test file is uploaded and scanned too
    pem = f"{begin}\nAAAA\n-----END OPENSSH PRIVATE KEY-----\n"
    for name in (".ssh/id_ed25519", "id_rsa", ".netrc", "credentials.json", "secrets/db.txt", "cert.p12"):
        (work / name).parent.mkdir(parents=True, exist_ok=True)
        (work / name).write_text(pem)  # the usual credential files are excluded by default ...
    names = {p.relative_to(work).as_posix() for p in uploaded_files(work, excludes)}
    assert names == {".rayignore", "pipelines/configs/run.yaml"}
    assert assert_upload_clean(work, excludes, environ={}) == 2

    (work / "notes.txt").write_text(pem)  # ... and a key under any other name is refused with its path
    with pytest.raises(SubmitError, match=r"notes\.txt: looks like a private key"):
        assert_upload_clean(work, excludes, environ={})
    (work / "notes.txt").unlink()
    sa = {"type": "service_account", "private_key": "-" * 5 + "BEGIN PRIVATE " + "KEY-----\nx\n"}
    (work / "pipelines" / "sa.json").write_text(json.dumps(sa))
    with pytest.raises(SubmitError, match=r"pipelines/sa\.json: looks like a private key"):
        assert_upload_clean(work, excludes, environ={})
    (work / "pipelines" / "sa.json").unlink()

    # A secret's value written into the config body (not only in --set values) is refused, escaped or not.
    secret = "s3cr\\et-ünïcode-value"
    (work / "pipelines" / "configs" / "run.yaml").write_text(
        f"run:\n  name: exp\n# key: {json.dumps(secret)}\n"
    )
    with pytest.raises(SubmitError, match=r"pipelines/configs/run\.yaml: contains the value of \$API_TOKEN"):
        assert_upload_clean(work, excludes, environ={"API_TOKEN": secret})


def test_the_real_working_directory_scans_clean():
    from system.launch.plan import assert_upload_clean

    excludes = load_runtime_env_file(REPO / "cluster" / "runtime_env.yaml")["excludes"]
    assert assert_upload_clean(REPO, excludes, environ={}) > 50  # the source tree, not .venv or runs/


def test_checkpoints_load_weights_only():
    """Every torch.load in system/ and pipelines/ passes weights_only=True; nothing unpickles."""
    calls = []
    for path in _sources("system", "pipelines"):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call):
                continue
            name = ast.unparse(node.func)
            if name in {"pickle.load", "pickle.loads", "torch.serialization.load"}:
                pytest.fail(f"{path.relative_to(REPO)}:{node.lineno}: {name}")
            if name == "torch.load":
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("weights_only"), ast.Constant) and kw["weights_only"].value is True
                assert ok, f"{path.relative_to(REPO)}:{node.lineno}: torch.load without weights_only=True"
                calls.append(path.name)
    assert calls, "the weights loader was not found (system/model/factory.py)"


def test_our_scripts_never_bind_the_dashboard_beyond_loopback():
    files = _sources("system", "pipelines") + list((REPO / "cluster").rglob("*.yaml")) + [REPO / "Makefile"]
    files += [p for p in (REPO / ".ci").rglob("*") if p.is_file()]
    for path in files:
        text = path.read_text()
        if path.parent.name == "kuberay":
            # A KubeRay head binds all of the pod's interfaces (the operator, KubeRay's probes and port-forward
            # need it); its NetworkPolicy keeps the port inside (test_cluster_configs). Exactly that one line.
            bind = 'dashboard-host: "0.0.0.0"'
            assert text.count("0.0.0.0") == text.count(bind) == 1, f"{path.relative_to(REPO)}"
            text = text.replace(bind, "")
        assert "0.0.0.0" not in text, f"{path.relative_to(REPO)} mentions 0.0.0.0"
        for m in re.finditer(r"dashboard[-_]host\W+([\w.:]+)", text):
            assert m.group(1) == "127.0.0.1", f"{path.relative_to(REPO)}: {m.group(0)}"
