"""How the reports write a figure: fixed digits, and "n/a" for a missing or NaN value.

Shared by the run report (system.reports.report), the sweep's tables (system.reports.sweep) and the pipelines' logs.
"""

from __future__ import annotations

import math


def fmt(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"
