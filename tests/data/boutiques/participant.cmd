mkdir -p out; bids_brainage examples/ds-ixi3 out participant --normalization gmm --skull-strip auto --registration affine --bias-fit model
