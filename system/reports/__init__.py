"""What a run writes for people: the report (markdown, JSON, plots) and the sweep's tables and figures."""
