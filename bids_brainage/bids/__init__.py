"""BIDS input and output: the validator, T1w discovery, participants.tsv, the derivatives layout.

- ``validate``: the BIDS validator, offline.
- ``layout``: the T1w images to process (pybids) and the names of their outputs.
- ``participants``: ages and columns from ``participants.tsv`` / ``sessions.tsv``.
- ``derivatives``: the BIDS Derivatives the app writes (names, sidecars, failures).
"""
