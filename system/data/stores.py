"""Where a dataset's files live: local paths and object-store URLs (s3://, gs://), opened through pyarrow.

Below both the dataset contract (system.data.dataset_dir reads a manifest from either kind of root) and the
shard specs (system.data.shard_spec). pyarrow is imported when a filesystem is first needed, so the contract
stays light to import.

Object stores go through pyarrow's filesystems, configured the standard way and never from our config files:
s3 reads AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_DEFAULT_REGION /
AWS_REGION (and ~/.aws, instance roles); gs reads the Google application-default credentials.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING

from system.data.faults import DatasetError

if TYPE_CHECKING:
    import pyarrow.fs as pafs

SCHEMES = ("s3", "gs", "gcs")


def is_url(path: str) -> bool:
    """True for an object-store URL (s3://, gs://); local paths and file:// are not URLs here."""
    return "://" in path and path.split("://", 1)[0].lower() in SCHEMES


def join(root: str, *parts: str) -> str:
    """Join a dataset root (local path or URL) and relative parts; local paths come out absolute."""
    if is_url(root):
        return "/".join([root.rstrip("/"), *(p.strip("/") for p in parts)])
    return str(Path(root).resolve().joinpath(*parts))


# The environment that decides where and as whom a filesystem connects: a cached filesystem is reused only
# while these are unchanged (a changed endpoint must not be served by a client built for the old one).
_STORE_ENV = (
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
    "AWS_PROFILE",
    "AWS_ACCESS_KEY_ID",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "GOOGLE_APPLICATION_CREDENTIALS",
)


@lru_cache(maxsize=16)
def _store(scheme: str, bucket: str, env: tuple[str | None, ...]) -> pafs.FileSystem:
    # One filesystem per bucket, process and environment: from_uri may look the bucket's region up (one request).
    import pyarrow.fs as pafs

    fs, _ = pafs.FileSystem.from_uri(f"{scheme}://{bucket}")
    return fs


def filesystem_for(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, the path as that filesystem takes it) for a local path or an object-store URL."""
    import pyarrow.fs as pafs

    if not is_url(path):
        return pafs.LocalFileSystem(), str(Path(path).resolve())
    scheme, rest = path.split("://", 1)
    scheme = scheme.lower()
    bucket = rest.split("/", 1)[0]
    if not bucket:
        raise DatasetError(f"{path}: no bucket in the URL")
    try:
        return _store(scheme, bucket, tuple(os.environ.get(k) for k in _STORE_ENV)), rest.rstrip("/")
    except (OSError, ValueError) as e:
        raise DatasetError(f"{path}: cannot open the object store ({e})") from None


def fs_path(url: str) -> str:
    """The path a filesystem from filesystem_for takes, without a request (read tasks call it per shard)."""
    return url.split("://", 1)[1].rstrip("/") if is_url(url) else url


def fs_path_to_url(path: str, like: str) -> str:
    """The inverse of filesystem_for: a filesystem path as a URL with the scheme of `like`."""
    return f"{like.split('://', 1)[0]}://{path}" if is_url(like) else path


def read_text(path: str) -> str:
    """A small text file (a manifest, a class corpus) from a local path or an object-store URL."""
    fs, p = filesystem_for(path)
    with fs.open_input_stream(p) as f:
        return f.read().decode("utf-8")


def copy_out(fs: pafs.FileSystem, path: str, dest: Path, shown: str | None = None) -> Path:
    """A file of any pyarrow filesystem (an object store's, or the one a Ray checkpoint carries) streamed to the
    local `dest` (a checkpoint's weights can be gigabytes). FileNotFoundError names it (as `shown`)."""
    import pyarrow.fs as pafs

    if fs.get_file_info(path).type != pafs.FileType.File:
        raise FileNotFoundError(f"{shown or path}: no such file")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with fs.open_input_stream(path) as src, open(dest, "wb") as out:
        shutil.copyfileobj(src, out, 8 << 20)
    return dest


def exists(paths: Sequence[str]) -> list[bool]:
    """Whether each path is a file (one metadata request per object on an object store)."""
    if not paths:
        return []
    import pyarrow.fs as pafs

    fs, _ = filesystem_for(paths[0])
    infos = fs.get_file_info([filesystem_for(p)[1] for p in paths])
    return [i.type == pafs.FileType.File for i in infos]
