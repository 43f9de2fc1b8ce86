"""The dataset directory contract that every stage consumes.

    <root>/manifest.json
    <root>/<split>/00000.tar ...          img2dataset layout: {key}.jpg, {key}.txt, {key}.json
    <root>/text/desc_<label>.txt          class description corpus (VL-LTR format)
    <root>/text/truth.jsonl               optional: per-sentence boilerplate labels (demo data)

The manifest is the single source of truth for which shards exist: readers never glob, so a stale shard left in
a split folder cannot leak into training. It is validated on load with messages that name the file and field,
because a broken dataset otherwise surfaces minutes later as an obscure error inside a distributed read task.
"""

from __future__ import annotations

import itertools
import json
import os
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from system.data.faults import DatasetError  # defined with the other data errors; importable from here too
from system.data.stores import exists, filesystem_for, is_url, join

FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
# img2dataset keys: shard * KEY_STRIDE + index within the shard, zero padded to 9 digits.
KEY_STRIDE = 10_000
# A fixed tar member mtime makes shards byte-identical across reruns (webdataset stamps time.time() otherwise).
_TAR_MTIME = 0


@dataclass
class SplitInfo:
    """One split: its sample count and its shard files, relative to the dataset root."""

    num_samples: int
    shards: list[str]


@dataclass
class Manifest:
    """Contents of manifest.json (see the module docstring)."""

    format_version: int
    name: str
    class_names: list[str]
    train_counts: list[int]
    splits: dict[str, SplitInfo]
    text_dir: str | None = "text"
    image_size: int | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def shard_paths(self, root: str | os.PathLike, split: str) -> list[str]:
        """Absolute shard paths of `split` (URLs when `root` is an object-store URL)."""
        if split not in self.splits:
            raise DatasetError(
                f"split {split!r} is not in the manifest of {root} (splits: {sorted(self.splits)})"
            )
        if is_url(str(root)):
            return [join(str(root), rel) for rel in self.splits[split].shards]
        base = Path(root).resolve()
        return [str(base / rel) for rel in self.splits[split].shards]

    def text_path(self, root: str | os.PathLike) -> str | None:
        """Absolute path of the class text folder, or None when the dataset has no text."""
        return None if self.text_dir is None else str(Path(root).resolve() / self.text_dir)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Build and validate a manifest; DatasetError names the offending field."""
        if not isinstance(data, dict):
            raise DatasetError(f"the manifest must be a JSON object, got {type(data).__name__}")
        known = {f for f in cls.__dataclass_fields__}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"unknown field(s) {unknown}; known fields: {sorted(known)}")
        required = ["format_version", "name", "class_names", "train_counts", "splits"]
        missing = [k for k in required if k not in data]
        if missing:
            raise DatasetError(f"missing required field(s) {missing}")
        version = data["format_version"]
        if version != FORMAT_VERSION:
            raise DatasetError(
                f"field 'format_version' is {version!r}, this uniproto reads format {FORMAT_VERSION}"
            )
        name = _expect(data, "name", str)
        class_names = _expect(data, "class_names", list)
        if not class_names or not all(isinstance(c, str) and c.strip() for c in class_names):
            raise DatasetError("field 'class_names' must be a non-empty list of non-empty strings")
        dupes = sorted({c for c in class_names if class_names.count(c) > 1})
        if dupes:
            raise DatasetError(f"field 'class_names' has duplicates: {dupes}")
        counts = _expect(data, "train_counts", list)
        if not all(_is_int(n) and n >= 0 for n in counts):
            raise DatasetError("field 'train_counts' must be a list of non-negative integers")
        if len(counts) != len(class_names):
            raise DatasetError(
                f"field 'train_counts' has {len(counts)} entries but 'class_names' has {len(class_names)}"
            )
        splits = {}
        for split, info in _expect(data, "splits", dict).items():
            splits[split] = _split_from_dict(split, info)
        if "train" in splits and splits["train"].num_samples != sum(counts):
            raise DatasetError(
                f"field 'splits.train.num_samples' is {splits['train'].num_samples} but 'train_counts' sums "
                f"to {sum(counts)}"
            )
        text_dir = data.get("text_dir", "text")
        if text_dir is not None:
            _check_relative(text_dir, "text_dir")
        image_size = data.get("image_size")
        if image_size is not None and not (_is_int(image_size) and image_size > 0):
            raise DatasetError(f"field 'image_size' must be a positive integer or null, got {image_size!r}")
        source = data.get("source", "")
        if not isinstance(source, str):
            raise DatasetError(f"field 'source' must be a string, got {type(source).__name__}")
        extra = data.get("extra", {})
        if not isinstance(extra, dict):
            raise DatasetError(f"field 'extra' must be an object, got {type(extra).__name__}")
        return cls(
            version, name, list(class_names), list(counts), splits, text_dir, image_size, source, extra
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _expect(data: dict, key: str, kind: type) -> Any:
    value = data[key]
    if not isinstance(value, kind):
        raise DatasetError(f"field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _check_relative(path: Any, where: str) -> None:
    # Relative paths keep a dataset relocatable (copy it to a cluster's shared storage and it still loads).
    if not isinstance(path, str) or not path:
        raise DatasetError(f"field {where!r} must be a non-empty string, got {path!r}")
    if os.path.isabs(path) or ".." in Path(path).parts:
        raise DatasetError(f"field {where!r} must be a path relative to the dataset root, got {path!r}")


def _split_from_dict(split: str, info: Any) -> SplitInfo:
    where = f"splits.{split}"
    if not isinstance(info, dict) or set(info) != {"num_samples", "shards"}:
        raise DatasetError(f"field {where!r} must be an object with exactly 'num_samples' and 'shards'")
    num = info["num_samples"]
    if not (_is_int(num) and num >= 0):
        raise DatasetError(f"field '{where}.num_samples' must be a non-negative integer, got {num!r}")
    shards = info["shards"]
    if not isinstance(shards, list):
        raise DatasetError(f"field '{where}.shards' must be a list of paths")
    for i, rel in enumerate(shards):
        _check_relative(rel, f"{where}.shards[{i}]")
    if num > 0 and not shards:
        raise DatasetError(f"field '{where}.shards' is empty but num_samples is {num}")
    return SplitInfo(num, list(shards))


def write_manifest(root: str | os.PathLike, manifest: Manifest) -> str:
    """Write `<root>/manifest.json` atomically (a reader never sees a half-written file); returns its path."""
    Manifest.from_dict(manifest.to_dict())  # refuse to write what load_manifest would refuse to read
    path = Path(root) / MANIFEST_NAME
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(manifest.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return str(path)


def parse_manifest(raw: bytes, path: Any) -> Manifest:
    """A manifest from the bytes of `path`; every way it can be wrong is a DatasetError naming the file:
    not UTF-8, not JSON, nested past the parser's stack, or a field the contract refuses."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        raise DatasetError(f"{path}: not UTF-8 text (byte {err.start})") from None
    except json.JSONDecodeError as err:
        raise DatasetError(f"{path} is not valid JSON: {err}") from None
    except (ValueError, RecursionError) as err:  # too many digits in a number; nesting past the stack
        raise DatasetError(f"{path} is not valid JSON ({type(err).__name__}: {err})") from None
    try:
        return Manifest.from_dict(data)
    except DatasetError as err:
        raise DatasetError(f"{path}: {err}") from None


def load_manifest(root: str | os.PathLike) -> Manifest:
    """Load and validate `<root>/manifest.json`, checking that every listed shard and the text folder exist.
    `root` may be an object-store URL (s3://bucket/ds): read through system.data.stores' filesystems."""
    if is_url(str(root)):
        return load_remote_manifest(str(root))
    path = Path(root) / MANIFEST_NAME
    if not path.is_file():
        raise DatasetError(
            f"no dataset manifest at {path}. Point the config at a dataset directory, or create the demo "
            f"dataset with: uniproto make-demo-data --out DIR"
        )
    manifest = parse_manifest(path.read_bytes(), path)
    for split, info in manifest.splits.items():
        for i, rel in enumerate(info.shards):
            if not (Path(root) / rel).is_file():
                raise DatasetError(
                    f"{path}: field 'splits.{split}.shards[{i}]' lists {rel}, which does not exist "
                    f"(expected {Path(root) / rel})"
                )
    if manifest.text_dir is not None and not (Path(root) / manifest.text_dir).is_dir():
        raise DatasetError(
            f"{path}: field 'text_dir' is {manifest.text_dir!r} but {Path(root) / manifest.text_dir} is not a "
            f"directory (set it to null for a dataset without class text)"
        )
    return manifest


def load_remote_manifest(root: str) -> Manifest:
    """A dataset directory's manifest read through the filesystem layer (local or object store); the listed
    shards are checked to exist (one request each on an object store)."""
    path = join(root, MANIFEST_NAME)
    try:
        fs, p = filesystem_for(path)
        with fs.open_input_stream(p) as f:
            raw = f.read()
    except FileNotFoundError:
        raise DatasetError(f"no dataset manifest at {path}") from None
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e}") from None
    manifest = parse_manifest(raw, path)
    for split, info in manifest.splits.items():
        urls = [join(root, rel) for rel in info.shards]
        for i, ok in enumerate(exists(urls)):
            if not ok:
                raise DatasetError(
                    f"{path}: field 'splits.{split}.shards[{i}]' lists {info.shards[i]}, which does not exist "
                    f"(expected {urls[i]})"
                )
    return manifest


def sample_key(shard: int, index: int) -> str:
    """img2dataset-style key: 9 digits, shard * 10000 + index within the shard."""
    if not 0 <= index < KEY_STRIDE:
        raise ValueError(f"index must be in [0, {KEY_STRIDE}), got {index}")
    return f"{shard * KEY_STRIDE + index:09d}"


def _encode_sample(sample: dict[str, Any], key: str) -> dict[str, Any]:
    out: dict[str, Any] = {"__key__": key}
    for ext, value in sample.items():
        if ext == "__key__":
            continue
        if ext.startswith("_"):
            raise ValueError(f"sample {key}: field {ext!r} starts with '_', reserved for webdataset metadata")
        if isinstance(value, (dict, list)):
            # Encoded here, not by webdataset, so the bytes are the same on every run and Python version.
            value = json.dumps(value, ensure_ascii=False, sort_keys=True).encode("utf-8")
        elif isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, (bytes, bytearray)):
            raise ValueError(f"sample {key}: field {ext!r} must be bytes, str or a JSON object")
        out[ext] = bytes(value)
    return out


def shard_relpath(split: str, shard: int) -> str:
    """A split's shard file, relative to the dataset root: `<split>/00000.tar`."""
    return f"{split}/{shard:05d}.tar"


def write_shard(
    root: str | os.PathLike,
    rel: str,
    shard: int,
    samples: Iterable[dict[str, Any]],
    seen: set[str] | None = None,
) -> int:
    """Write one shard `<root>/<rel>` and return its sample count.

    Written under a temporary name and renamed when complete, so an interrupted writer never leaves a
    truncated shard under the final name. Keys default to `sample_key(shard, position)`; `seen` carries the keys
    of earlier shards of the split, so duplicates across shards are refused too.
    """
    import webdataset as wds  # imports torch (seconds): only pay for it when writing

    seen = set() if seen is None else seen
    path = Path(root) / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    try:
        with open(tmp, "wb") as stream:
            writer = wds.TarWriter(stream, mtime=_TAR_MTIME)
            try:
                for sample in samples:
                    if count >= KEY_STRIDE:
                        raise ValueError(f"shard {rel}: more than {KEY_STRIDE} samples")
                    key = str(sample.get("__key__") or sample_key(shard, count))
                    if "." in key or "/" in key or not key:
                        raise ValueError(f"sample key {key!r} must be non-empty and contain no '.' or '/'")
                    if key in seen:
                        raise ValueError(f"duplicate sample key {key!r} in {rel}")
                    seen.add(key)
                    writer.write(_encode_sample(sample, key))
                    count += 1
            finally:
                writer.close()
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return count


def write_split_shards(
    root: str | os.PathLike, split: str, samples: Iterable[dict[str, Any]], samples_per_shard: int
) -> SplitInfo:
    """Write `samples` to `<root>/<split>/00000.tar, 00001.tar, ...` and return the split's manifest entry.

    A sample is a dict with `jpg` (bytes), `txt` (str), `json` (dict) and optionally `__key__`; without a key the
    img2dataset key of its position is used. Keys must be unique and must not contain '.', because webdataset
    takes everything up to the first dot of a member name as the key.
    """
    if not _is_int(samples_per_shard) or not 1 <= samples_per_shard <= KEY_STRIDE:
        raise ValueError(
            f"samples_per_shard must be an integer in [1, {KEY_STRIDE}], got {samples_per_shard!r}"
        )
    if not split or "/" in split or split.startswith("."):
        raise ValueError(f"split must be a plain folder name, got {split!r}")
    (Path(root) / split).mkdir(parents=True, exist_ok=True)
    shards: list[str] = []
    seen: set[str] = set()
    count = 0
    stream = iter(samples)
    for first in stream:  # one shard per iteration: the first sample, then up to samples_per_shard - 1 more
        rel = shard_relpath(split, len(shards))
        chunk = itertools.chain([first], itertools.islice(stream, samples_per_shard - 1))
        count += write_shard(root, rel, len(shards), chunk, seen)
        shards.append(rel)
    return SplitInfo(num_samples=count, shards=shards)


def _decode_member(ext: str, data: bytes) -> Any:
    if ext == "txt":
        return data.decode("utf-8")
    if ext == "json":
        return json.loads(data.decode("utf-8"))
    return data


def iter_shard_samples(paths: list[str]) -> Iterator[dict[str, Any]]:
    """Read shards back with the stdlib (no webdataset pipeline): dicts with `__key__`, `jpg` bytes, `txt` str,
    `json` dict (and any other member as bytes), in file order. For tests and tools, not for training."""
    for path in paths:
        done: set[str] = set()
        current: dict[str, Any] | None = None
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                base = member.name.rsplit("/", 1)[-1]
                if "." not in base:
                    raise DatasetError(f"{path}: member {member.name!r} has no extension")
                dot = member.name.rfind("/") + 1 + base.index(".")
                key, ext = member.name[:dot], member.name[dot + 1 :]
                handle = tar.extractfile(member)
                data = handle.read() if handle is not None else b""
                if current is None or current["__key__"] != key:
                    if current is not None:
                        yield current
                        done.add(current["__key__"])
                    if key in done:
                        raise DatasetError(f"{path}: members of key {key!r} are not contiguous")
                    current = {"__key__": key}
                if ext in current:
                    raise DatasetError(f"{path}: duplicate member {member.name!r}")
                current[ext] = _decode_member(ext, data)
        if current is not None:
            yield current
