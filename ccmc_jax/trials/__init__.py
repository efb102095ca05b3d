"""Per-figure trials: ``make_run_trial(setting) -> run_trial(key) -> dict`` and the summaries
(slopes, bounds, plateaus) that the figure scripts and the claims checker read."""
