"""Command lines: ``parser`` and ``run`` (the BIDS App), ``train`` (``bids_brainage-train``)."""
