"""Data faults: what the reader and the decode stage skip, by reason, and the errors: a dataset that does not
follow the contract or cannot be read, and what strict mode raises.

Sample-level faults skip one sample; shard-level faults end the read of one shard (the samples it yielded
before the fault are kept) and never the dataset. Plain Python: the reader, the decode stage and the ledger
that sums the counts share these names.
"""

from __future__ import annotations

# Sample-level reasons (one sample skipped). The reader finds the structural ones, the decode stage the rest.
DUPLICATE_MEMBER = "duplicate_member"  # the same {key}.{ext} twice in a row of members
NON_CONTIGUOUS_KEY = "non_contiguous_key"  # members of a key that reappear after other keys
# A member name that is not valid UTF-8: its key could not become a string column (pyarrow refuses it), so
# the sample is dropped rather than the read task failing.
BAD_NAME = "bad_name"
# A member that declares more bytes than `data.max_member_bytes`: its bytes are passed over in bounded chunks,
# never held, and its sample is dropped (a shard cannot make a read task allocate what its header claims).
OVERSIZED_MEMBER = "oversized_member"
MISSING_IMAGE = "missing_image"
MISSING_TEXT = "missing_text"
MISSING_LABEL = "missing_label"  # no .json, or no "label" key in it
BAD_METADATA = "bad_metadata"  # the .json is not valid JSON (or nests past the parser's depth)
BAD_LABEL = "bad_label"  # "label" is not a JSON integer (3.7, true, "3", 1e400 are refused, never coerced)
UNKNOWN_LABEL = "unknown_label"  # an integer outside [0, K)
CORRUPT_IMAGE = "corrupt_image"

# Shard-level reasons (the rest of the shard skipped, the other shards read on).
MISSING_SHARD = "missing"  # no such file or object
UNREADABLE = "unreadable"  # it exists but cannot be opened (permissions, the object store refused)
EMPTY_SHARD = "empty"  # zero bytes, or a tar without a single sample
NOT_A_TAR = "not_a_tar"
TRUNCATED = "truncated"  # the tar (or its compression) ends inside a member
READ_ERROR = "read_error"  # an I/O error in the middle of the stream
# A header past the first one whose checksum holds but whose fields do not parse (a size that is not a number
# or is negative, a malformed pax record, an extended header over the member cap): the next member's name,
# size or start is unknown, so the rest of the shard is skipped.
BAD_HEADER = "bad_header"
# Anything else the reader raised (its detail: the exception's type and message). Counted like the others so
# that no shard can fail the dataset, which Ray Data would do for one errored read task.
READER_ERROR = "reader_error"


class DatasetError(ValueError):
    """A dataset directory or manifest that does not follow the contract (system.data.dataset_dir), or a
    dataset location that cannot be read."""


class DataFault(DatasetError):
    """A bad sample or shard under `data.strict` / `check-shards --strict`: names the shard and the key."""
