"""Hand-made model inputs: ``histogram`` (intensity histograms), ``morphometry`` (log-Jacobians
of a SyN warp and rank-normalised intensities)."""
