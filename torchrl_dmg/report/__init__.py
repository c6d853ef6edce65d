"""Tables with confidence intervals, learning curves, ablation and overestimation plots
of recipe runs (``recipes/report.py``)."""
