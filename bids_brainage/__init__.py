"""bids_brainage: a BIDS App that predicts brain age from T1-weighted MRI."""

__version__ = "0.1.0"
