"""Training the models: ``train`` (the work of ``bids_brainage-train``), ``dataset`` (inputs
rebuilt from derivatives), ``splits`` (participant-level splits), ``robustness`` (the gate)."""
