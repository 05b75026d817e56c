"""bids_brainage: a BIDS App that predicts brain age from T1-weighted MRI.

Where things live (one concept, one home):

- ``cli/``         command lines: ``bids_brainage`` (``run``, ``parser``), ``bids_brainage-train``
- ``levels/``      the analysis levels: ``participant`` (runs the workflow), ``group`` (the cohort)
- ``workflows/``   nipype workflow factories (``init_participant_wf``)
- ``interfaces/``  thin nipype interfaces over the pure functions below
- ``preproc/``     conform, skull strip, mask, N4, registration, template, normalisation
- ``features/``    model inputs made by hand: intensity histograms, deformation features
- ``models/``      model cards and weights, the forest, the 3D ResNet, prediction
- ``training/``    training the models: dataset rebuild, splits, the robustness gate
- ``stats/``       metrics, age-bias correction and cohort statistics
- ``reports/``     participant and group HTML reports and their figures
- ``bids/``        BIDS in and out: validator, T1w discovery, participants.tsv, derivatives
- ``config.py``    the resolved settings of a run; ``io.py`` atomic writes, checked image
  loading, the work-dir lock; ``helper.py`` the run's second process (deepbet and the tissue
  warp with several threads); ``pause.py`` a test hook that stops a run at a named point
- ``data/``        the bundled template and models (files, not code)
"""

__version__ = "0.1.0"
