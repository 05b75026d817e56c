"""Thin nipype interfaces: ``preproc`` (one per preprocessing step), ``predict`` (the models),
``derivatives`` (the sink that writes the outputs), ``reports`` (a participant's report),
``base`` (the timed interface)."""
