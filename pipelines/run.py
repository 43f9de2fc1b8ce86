"""The whole pipeline as one Ray job: text filter -> prototypes -> sweep (stage 1 + stage 2 per trial) -> test.

    uniproto run --config pipelines/configs/demo.yaml [--set a.b=value ...]
    python -m pipelines.run --config ...                 (the form `ray job submit` uses)

The sweep is the one in the config's `sweep` section (`uniproto sweep` takes --space/--samples on top); with
`sweep.space: null` it is a single trial, which is how `best.yaml` from a sweep reproduces its chosen trial.
Connects to RAY_ADDRESS (or ray.address) when set, otherwise starts a local Ray.
"""

from __future__ import annotations

import sys
from typing import Any

from pipelines.common import parse_args, prepare_run
from pipelines.sweep import run_pipeline


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args("uniproto run", __doc__, argv)
    return run_pipeline(prepare_run(args))  # config, dataset and space are validated before Ray starts


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
