"""Statistics: ``metrics`` (MAE, r, R², RMSE, gap, age-bias correction) and ``cohort`` (the
group level's per-model summaries)."""
