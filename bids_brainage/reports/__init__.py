"""HTML reports: ``participant`` (``sub-<label>.html``), ``group`` (``group_report.html``),
their ``figures`` and ``group_figures``, and the Jinja2 ``templates``."""
