"""The web pages: Jinja2 templates as strings (autoescaped), their CSS and their one script.

No build step and no external resources: the pages work offline in any current browser.
The upload form is a plain HTML form (it works without JavaScript); the script only checks
the file size before sending and, on a job page, polls the job's status fragment every
1.5 s and swaps it in, until the job is done or failed.
"""
from __future__ import annotations

import datetime as dt
import functools

from bids_brainage.web.jobs import STAGE_LABELS

STAGE_ORDER = ("conform", "skull_strip", "largest_component", "n4", "register", "normalize",
               "predict", "ds_brainage", "report", "packaging")

CSS = """
:root { --ink:#1d2733; --muted:#5c6b7a; --line:#d7dee6; --bad:#b3261e; --ok:#1b7a33;
        --accent:#2a5d8f; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1100px; padding: 0 1.2rem 3rem; }
header { border-bottom: 3px solid var(--accent); margin-bottom: 1rem; padding: 0.9rem 0 0.5rem;
         display: flex; align-items: baseline; gap: 2rem; }
header h1 { font-size: 1.4rem; margin: 0; } header h1 a { color: inherit; text-decoration: none; }
h2 { font-size: 1.15rem; border-bottom: 1px solid var(--line); margin-top: 1.8rem; }
.muted, small { color: var(--muted); }
form.upload { display: grid; grid-template-columns: 13rem 1fr; gap: 0.7rem 1rem;
              align-items: center; max-width: 760px; }
form.upload .wide { grid-column: 1 / 3; }
fieldset { border: 1px solid var(--line); } label.check { display: block; }
button { font-size: 1rem; padding: 0.45rem 1.2rem; background: var(--accent); color: white;
         border: 0; border-radius: 4px; cursor: pointer; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.92rem; }
th, td { border: 1px solid var(--line); padding: 0.3rem 0.6rem; text-align: left; }
th { background: #eef3f8; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.alert { border-left: 5px solid var(--bad); background: #fdecea; padding: 0.6rem 0.9rem;
         margin: 0.8rem 0; }
.status { border: 1px solid var(--line); border-left: 6px solid var(--accent);
          padding: 0.7rem 1rem; margin: 1rem 0; background: #f6f9fc; }
.status.done { border-left-color: var(--ok); } .status.failed { border-left-color: var(--bad); }
.status .state { font-size: 1.2rem; font-weight: 600; }
ol.stages { margin: 0.4rem 0 0; padding-left: 1.4rem; columns: 2; }
ol.stages li.done { color: var(--ok); } ol.stages li.now { font-weight: 700; }
ol.stages li.todo { color: var(--muted); }
.big { font-size: 1.6rem; font-weight: 700; }
iframe.report { width: 100%; height: 1400px; border: 1px solid var(--line); }
ul.downloads li { margin: 0.2rem 0; }
"""

SCRIPT = """
(function () {
  var form = document.querySelector('form.upload');
  if (form) {
    form.addEventListener('submit', function (event) {
      var input = form.querySelector('input[type=file]');
      var limit = Number(form.dataset.limit);
      var note = document.getElementById('upload-note');
      if (input.files.length && input.files[0].size > limit) {
        event.preventDefault();
        note.textContent = input.files[0].name + ': larger than the upload limit of ' +
          Math.round(limit / 1048576) + ' MB';
        note.className = 'alert';
        return;
      }
      note.textContent = 'Uploading and checking the scan...';
      note.className = 'muted';
    });
  }
  var live = document.getElementById('live');
  if (!live) return;
  function poll() {
    if (live.dataset.status === 'done' || live.dataset.status === 'failed') return;
    fetch(live.dataset.src, {cache: 'no-store'}).then(function (r) {
      if (!r.ok) throw new Error(r.status);
      return r.text();
    }).then(function (html) {
      var box = document.createElement('div');
      box.innerHTML = html;
      var next = box.firstElementChild;
      if (next && next.outerHTML !== live.outerHTML) {
        live.replaceWith(next);
        live = next;
      }
    }).catch(function () {}).then(function () { setTimeout(poll, 1500); });
  }
  setTimeout(poll, 1500);
})();
"""

BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{{ title }} · bids_brainage</title><style>{{ css | safe }}</style></head>
<body><header><h1><a href="/">bids_brainage · brain age</a></h1>
<nav><a href="/">New scan</a>{% if list_days %} · <a href="/#jobs">Jobs</a>{% endif %}</nav>
<span class="muted">version {{ version }}</span></header>
{% block main %}{% endblock %}
<script src="/static/page.js"></script></body></html>
"""

INDEX = """{% extends "base" %}{% block main %}
<h2>Predict a brain age from one T1-weighted scan</h2>
<p>Upload one T1w MRI: a NIfTI file (<code>.nii</code>, <code>.nii.gz</code>) or a zip of one
DICOM series (converted with dcm2niix). It runs through the same pipeline and models as the
BIDS App (skull strip, bias correction, registration to MNI, the models below) and takes about
a minute once it starts. Results are kept for {{ retention }} and then deleted.</p>
{% if error %}<div class="alert" role="alert"><strong>Upload refused:</strong> {{ error }}</div>{% endif %}
<form class="upload" method="post" action="/jobs" enctype="multipart/form-data"
      data-limit="{{ limit_bytes }}">
  <label for="file">T1w scan</label>
  <input id="file" name="file" type="file" accept=".nii,.gz,.nii.gz,.zip" required>
  <label for="age">Age in years <small>(optional)</small></label>
  <input id="age" name="age" type="number" min="0" max="130" step="0.01" value="{{ form.age }}">
  <label for="sex">Sex <small>(optional)</small></label>
  <select id="sex" name="sex">{% for value, text in sexes %}
    <option value="{{ value }}"{% if form.sex == value %} selected{% endif %}>{{ text }}</option>{% endfor %}
  </select>
  <span>Options</span>
  <label class="check"><input type="checkbox" name="skull_stripped" value="yes"
    {% if form.skull_stripped %}checked{% endif %}> the image is already skull-stripped</label>
  <span>Models</span>
  <fieldset>{% for model in models %}
    <label class="check"><input type="checkbox" name="models" value="{{ model.name }}"
      {% if model.name in form.models %}checked{% endif %}> <strong>{{ model.name }}</strong>
      <small>{{ model.about }}</small></label>{% endfor %}
  </fieldset>
  <span></span><div><button type="submit">Upload and start</button>
  <small>at most {{ limit_mb }} MB</small> <span id="upload-note"></span></div>
</form>
{% if list_days %}<h2 id="jobs">Jobs of the last {{ list_days }} days</h2>
{% if jobs %}<table><tr><th>submitted</th><th>scan</th><th>status</th><th>age</th>
<th>predicted age</th><th></th></tr>
{% for job in jobs %}<tr><td>{{ job.submitted | when }}</td><td>{{ job.input.filename }}</td>
<td>{{ job.status }}</td><td class="num">{{ job.age | years }}</td>
<td class="num">{{ job.main_age | years }}{% if job.main_model %} <small>{{ job.main_model }}</small>{% endif %}</td><td><a href="/jobs/{{ job.id }}">open</a></td></tr>
{% endfor %}</table>{% else %}<p class="muted">No jobs yet.</p>{% endif %}{% endif %}
{% endblock %}
"""

JOB = """{% extends "base" %}{% block main %}
<h2>{{ job.input.filename }} <small>submitted {{ job.submitted | when }}</small></h2>
{% include "live" %}
<h2>Input</h2>
<table>
<tr><th>file</th><td>{{ job.input.filename }}{% if job.input.kind == "dicom" %} (DICOM series,
 converted with dcm2niix){% endif %}</td></tr>
<tr><th>image</th><td>{{ job.input.shape | join(" × ") }} voxels of
 {{ job.input.voxel_mm | join(" × ") }} mm</td></tr>
<tr><th>participant</th><td>sub-{{ job.label }}, age {{ job.age | years }}, sex {{ job.sex or "n/a" }}</td></tr>
<tr><th>options</th><td>{% if job.options.skull_stripped %}already skull-stripped{% else %}skull strip with deepbet when needed{% endif %};
 models {{ job.options.models | join(", ") if job.options.models else "the defaults" }}</td></tr>
</table>
{% endblock %}
"""

LIVE = """<div id="live" data-status="{{ job.status }}" data-src="/jobs/{{ job.id }}/live">
<div class="status {{ job.status }}" role="status">
{% if job.status == "queued" %}
  <div class="state">Queued: position {{ position }} in the queue</div>
  <div class="muted">{{ position - 1 }} job(s) ahead of this one; this page updates by itself.</div>
{% elif job.status == "running" %}
  <div class="state">Running: {{ stage_label }}</div>
  {% if worker_lost %}<div class="alert">The worker running this job stopped (last report
  {{ job.heartbeat | when }}). The job is retried as soon as a worker runs again.</div>{% endif %}
  <ol class="stages">{% for s in stages %}<li class="{{ s.state }}">{{ s.label }}</li>{% endfor %}</ol>
{% elif job.status == "done" %}
  <div class="state">Done</div>
  <div class="muted">finished {{ job.finished | when }}, {{ (job.finished - job.started) | round(1) }} s of processing</div>
{% else %}
  <div class="state">Failed</div>
  <div class="alert" role="alert">{{ job.error }}</div>
{% endif %}
{% for note in job.notes or [] %}<div class="muted">{{ note }}</div>{% endfor %}
</div>
{% if job.status == "done" %}
{% set main = (predictions | selectattr("model", "equalto", "ensemble") | list or predictions)[0] %}
{% if main %}<p class="headline">Predicted brain age ({{ main.model }}):
<span class="big">{{ main.predicted_age | years }} years</span>
<span class="muted">90 % interval {{ main.interval_low | years }} – {{ main.interval_high | years }}{% if main.brain_age_gap is not none %}; brain-age gap {{ main.brain_age_gap | years(signed=True) }} years{% endif %}</span></p>{% endif %}
<h2>Predicted brain age</h2>
<table class="predictions"><tr><th>model</th><th>predicted age</th><th>90 % interval</th>
<th>age</th><th>brain-age gap</th>{% for f in flag_columns %}<th>{{ f }}</th>{% endfor %}</tr>
{% for row in predictions %}<tr data-model="{{ row.model }}"><td>{{ row.model }}</td>
<td class="num age" data-value="{{ row.predicted_age }}">{{ row.predicted_age | years }}</td>
<td class="num">{{ row.interval_low | years }} – {{ row.interval_high | years }}</td>
<td class="num">{{ row.age | years }}</td><td class="num">{{ row.brain_age_gap | years(signed=True) }}</td>
{% for f in flag_columns %}<td>{{ row[f] if row[f] is not none else "" }}</td>{% endfor %}</tr>
{% endfor %}</table>
<p class="muted">The interval is where a healthy person's true age falls 9 times in 10. The gap
is predicted minus chronological age (positive: the brain looks older).</p>
<h2>Downloads</h2>
<ul class="downloads">
<li><a href="/jobs/{{ job.id }}/files/brainage.tsv" download>sub-{{ job.label }}_brainage.tsv</a> the predictions</li>
<li><a href="/jobs/{{ job.id }}/files/brainage.json" download>sub-{{ job.label }}_brainage.json</a> models, settings, timings, QC figures</li>
<li><a href="/jobs/{{ job.id }}/files/derivatives.zip" download>derivatives.zip</a> every output (BIDS Derivatives: images, mask, transform, tables, report)</li>
</ul>
<h2>Report <small><a href="/jobs/{{ job.id }}/report" target="_blank" rel="noopener">open in its own tab</a></small></h2>
<iframe class="report" title="participant report" src="/jobs/{{ job.id }}/report" sandbox></iframe>
{% endif %}
</div>"""

ERROR = """{% extends "base" %}{% block main %}
<div class="alert" role="alert">{{ message }}</div><p><a href="/">Back to the upload page</a></p>
{% endblock %}
"""


@functools.lru_cache(maxsize=1)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.DictLoader({"base": BASE, "index": INDEX, "job": JOB, "live": LIVE,
                                  "error": ERROR}),
        autoescape=True, undefined=jinja2.ChainableUndefined,
    )
    env.filters["when"] = when
    env.filters["years"] = years
    return env


def render(name: str, **context) -> str:
    from bids_brainage import __version__

    return environment().get_template(name).render(css=CSS, version=__version__, **context)


def when(timestamp) -> str:
    """A time for people: local, to the second.

    >>> when(None)
    'n/a'
    """
    if not timestamp:
        return "n/a"
    return dt.datetime.fromtimestamp(float(timestamp)).strftime("%Y-%m-%d %H:%M:%S")


def years(value, signed: bool = False) -> str:
    """An age or a gap in years, one decimal.

    >>> years(33.677), years(-2.04, signed=True), years(None)
    ('33.7', '−2.0', 'n/a')
    """
    if value is None or value == "":
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    text = f"{number:+.1f}" if signed else f"{number:.1f}"
    return text.replace("-", "−")


def stages(current: str | None) -> list[dict]:
    """The workflow's stages, each ``done``, ``now`` or ``todo`` relative to ``current``."""
    index = STAGE_ORDER.index(current) if current in STAGE_ORDER else -1
    return [{"label": STAGE_LABELS[s],
             "state": "done" if i < index else "now" if i == index else "todo"}
            for i, s in enumerate(STAGE_ORDER)]
