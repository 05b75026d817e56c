"""Thin nipype interfaces: ``preproc`` (one per preprocessing step), ``predict`` (the models),
``derivatives`` (the sink that writes the outputs), ``base`` (the timed interface)."""
