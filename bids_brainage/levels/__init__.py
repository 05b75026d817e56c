"""The BIDS-Apps analysis levels: ``participant`` (one workflow per T1w image) and ``group``."""
