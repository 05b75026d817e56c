"""Preprocessing as pure functions: ``conform``, ``skullstrip``, ``mask``, ``bias`` (N4),
``register``, ``template`` (the bundled MNI template and the 2 mm grid), ``normalize``."""
