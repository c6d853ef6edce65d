"""Reports of finished runs: learning curves (:mod:`torchrl_dmg.report.plotting`)."""
