"""The cluster side of `uniproto submit`: the address and token, the transport check, whether the cluster runs on
this machine, and the job client's calls (a free submission id, following logs, waiting for the end, the record).

Address: --address, else RAY_API_SERVER_ADDRESS, else RAY_ADDRESS, else http://127.0.0.1:8265. Token: Ray's own
lookup (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token); when RAY_AUTH_MODE is unset and a token exists,
token mode is switched on for this process (Ray 2.60's client sends no token otherwise). The token is never printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from system.launch.plan import CONSTRAINTS_FILE, DEFAULT_ADDRESS, TERMINAL, SubmitError


def resolve_address(arg: str | None) -> str:
    address = (
        arg or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS") or DEFAULT_ADDRESS
    )
    if address == "auto":
        address = DEFAULT_ADDRESS
    if address.startswith("ray://"):
        raise SubmitError(
            f"{address}: a Ray Client address; jobs are submitted to the dashboard's job API (http://<head>:8265)"
        )
    if "://" not in address:
        address = f"http://{address}"
    if urlsplit(address).scheme not in {"http", "https"}:
        raise SubmitError(f"{address}: the job API address is http(s)://<host>:<dashboard port>")
    return address.rstrip("/")


def is_loopback(address: str) -> bool:
    host = urlsplit(address).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def _explicit_address() -> Iterator[None]:
    """Ray's clients let RAY_ADDRESS / RAY_API_SERVER_ADDRESS override an explicit address; hide them briefly."""
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        yield
    finally:
        os.environ.update(saved)


def enable_token_auth() -> str:
    """Use the cluster token the way `ray.init` does for a local cluster: when RAY_AUTH_MODE is unset and Ray's
    token lookup finds one (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token), switch this process to token
    mode so that JobSubmissionClient sends it. Returns where the token comes from (never the token)."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return f"RAY_AUTH_MODE={mode}"
    path = os.environ.get("RAY_AUTH_TOKEN_PATH")
    if path and not (Path(path).is_file() and Path(path).stat().st_size > 0):
        raise SubmitError(f"RAY_AUTH_TOKEN_PATH={path}: missing or empty token file")
    if os.environ.get("RAY_AUTH_TOKEN"):
        source = "RAY_AUTH_TOKEN"
    elif path:
        source = "RAY_AUTH_TOKEN_PATH"
    elif (Path.home() / ".ray" / "auth_token").is_file():
        source = "~/.ray/auth_token"
    else:
        return "none (cluster without token authentication)"
    os.environ["RAY_AUTH_MODE"] = "token"
    from ray._raylet import Config as RayletConfig

    RayletConfig.initialize("")  # Ray caches its config; refresh it so this process observes token mode
    return source


def check_transport(address: str, insecure_http: bool = False) -> None:
    """Plain http beyond loopback would send the cluster token in clear: refused unless asked for by name."""
    if is_loopback(address) or urlsplit(address).scheme != "http":
        return
    if not insecure_http:
        raise SubmitError(
            f"{address} is plain http beyond loopback: the cluster token would cross the network in clear. Reach "
            "the head through a tunnel (`ray dashboard cluster/aws.yaml`, `kubectl port-forward`) and use "
            "http://127.0.0.1:8265, or https; --insecure-http sends it anyway"
        )
    print(f"[uniproto] warning: {address}: plain http beyond loopback (--insecure-http)", file=sys.stderr)


def connect(address: str, insecure_http: bool = False):
    """A JobSubmissionClient for `address`, with Ray's token when there is one; errors say what to check."""
    from ray.job_submission import JobSubmissionClient

    check_transport(address, insecure_http)
    source = enable_token_auth()
    try:
        with _explicit_address():
            return JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection, auth and version errors all mean "cannot submit"
        raise SubmitError(f"cannot use the Ray job API at {address} (token: {source}): {e}") from None


def cluster_ray_version(client) -> str | None:
    """The cluster's Ray version from the job API's /api/version (through the SDK's own request helper, which
    carries the token and TLS settings); None when it cannot tell."""
    try:
        r = client._do_request("GET", "/api/version")
        return r.json().get("ray_version") if r.status_code == 200 else None
    except Exception:  # noqa: BLE001 - an old or unusual server: skip the check rather than fail the submission
        return None


def pinned_version(workdir: Path, package: str) -> str | None:
    path = workdir / CONSTRAINTS_FILE
    if not path.is_file():
        return None
    for line in path.read_text().splitlines():
        name, _, version = line.strip().partition("==")
        if name.lower() == package.lower() and version:
            return version
    return None


def _local_ips() -> set[str]:
    import psutil

    return {a.address.split("%")[0] for addrs in psutil.net_if_addrs().values() for a in addrs} | {
        "127.0.0.1",
        "::1",
    }


def cluster_is_local(address: str, attempts: int = 3) -> bool:
    """True when every node of the cluster runs on this machine (a loopback address is not enough: an SSH
    tunnel to a remote head is loopback too). Asks the State API for the node IPs; SubmitError when it cannot."""
    if not is_loopback(address):
        return False
    from ray.util.state import list_nodes

    error: Exception | None = None
    for attempt in range(attempts):
        try:
            with _explicit_address():
                nodes = list_nodes(address=address, raise_on_missing_output=False, timeout=30)
            ips = {n.node_ip for n in nodes if n.state == "ALIVE"}
            if ips:
                return ips <= _local_ips()
        except Exception as e:  # noqa: BLE001 - retried, then reported
            error = e
        time.sleep(2 * (attempt + 1))
    raise SubmitError(
        f"could not tell whether the cluster at {address} runs on this machine (State API: {error or 'no nodes'}); "
        "pass --cluster local or --cluster remote"
    )


def free_submission_id(client, sid: str, resubmit: bool) -> str:
    """`sid` when unused; with --resubmit after a finished job, the next free `<sid>-rN`."""
    candidate, n = sid, 1
    while True:
        try:
            info = client.get_job_info(candidate)
        except RuntimeError:  # "job does not exist"
            return candidate
        status = str(getattr(info.status, "value", info.status))
        if status not in TERMINAL:
            raise SubmitError(
                f"job {candidate} with this exact config is {status} on the cluster; follow it with "
                f"`uniproto submit logs {candidate} --follow` or stop it with `uniproto submit stop {candidate}`"
            )
        if not resubmit:
            raise SubmitError(
                f"job {candidate} with this exact config already ran ({status}); pass --resubmit to run it again "
                "(same run name and storage: Ray Train resumes from its last checkpoint)"
            )
        n += 1
        candidate = f"{sid}-r{n}"


def follow_logs(client, sid: str, out=sys.stdout) -> str:
    """Stream the job's log until it ends; return its final status."""

    async def tail() -> None:
        async for chunk in client.tail_job_logs(sid):
            out.write(chunk)
            out.flush()

    try:
        asyncio.run(tail())
    except RuntimeError as e:  # connection closed early: fall back to polling
        print(f"[uniproto] log stream ended early ({e}); polling the job status", file=sys.stderr)
    return wait_terminal(client, sid)


def wait_terminal(client, sid: str, poll_s: float = 2.0, timeout_s: float | None = None) -> str:
    t0 = time.monotonic()
    while True:
        status = client.get_job_status(sid)
        status = str(getattr(status, "value", status))
        if status in TERMINAL:
            return status
        if timeout_s is not None and time.monotonic() - t0 > timeout_s:
            return status
        time.sleep(poll_s)


def job_record(info) -> dict[str, Any]:
    keys = (
        "submission_id",
        "status",
        "message",
        "entrypoint",
        "metadata",
        "runtime_env",
        "start_time",
        "end_time",
    )
    rec = {k: getattr(info, k, None) for k in keys}
    rec["status"] = str(getattr(rec["status"], "value", rec["status"]))
    rec["driver_exit_code"] = getattr(info, "driver_exit_code", None)
    return rec


# ------------------------------------------------------------------------------------------------ CLI
