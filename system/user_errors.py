"""A user's mistake as a command's answer: a refused config or dataset prints one line naming the key or file,
and the command exits 2 (no traceback). Shared by the `uniproto` console script and `uniproto submit`."""

from __future__ import annotations

import sys
from collections.abc import Callable

from system.config import ConfigError
from system.data.dataset_dir import DatasetError


def exit_2_on_user_errors(fn: Callable[..., int], *args) -> int:
    """Run a command; a refused config or dataset prints one line naming the key or file and exits 2."""
    try:
        return fn(*args)
    except ConfigError as e:
        print(f"uniproto: config error: {e}", file=sys.stderr)
        return 2
    except DatasetError as e:
        print(f"uniproto: dataset error: {e}", file=sys.stderr)
        return 2
