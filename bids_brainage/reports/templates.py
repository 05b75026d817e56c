"""HTML templates of the reports (Jinja2, autoescaped), kept as strings in the package.

Strings rather than template files: nothing to list in package data, and the reports stay
self-contained: inline CSS, no scripts, no external fonts, figures embedded as data URIs.
"""
from __future__ import annotations

import functools
import math

CSS = """
:root { --ink: #1d2733; --muted: #5c6b7a; --line: #d7dee6; --bad: #b3261e; --warn: #8a5a00; }
* { box-sizing: border-box; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif;
       color: var(--ink); margin: 0 auto; max-width: 1200px; padding: 0 1.2rem 3rem; }
header { border-bottom: 3px solid #2a5d8f; margin-bottom: 1rem; padding: 1rem 0 0.5rem; }
h1 { font-size: 1.6rem; margin: 0; } h2 { border-bottom: 1px solid var(--line);
     margin-top: 2rem; } h3 { margin-bottom: 0.3rem; }
.meta, figcaption, footer { color: var(--muted); font-size: 0.9rem; }
nav a { margin-right: 1rem; }
table { border-collapse: collapse; margin: 0.5rem 0 1rem; font-size: 0.9rem; }
th, td { border: 1px solid var(--line); padding: 0.25rem 0.55rem; text-align: left; }
th { background: #eef3f8; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
tr.failed td, tr.unreadable td { color: var(--bad); }
.alert { border-left: 5px solid var(--warn); background: #fff6e0; padding: 0.5rem 0.8rem;
         margin: 0.6rem 0; }
.alert.bad { border-color: var(--bad); background: #fdecea; }
.alert.loud { border-width: 8px; font-weight: 600; }
.status-ok { color: #1b7a33; font-weight: 600; } .status-bad { color: var(--bad); font-weight: 600; }
figure { margin: 1rem 0; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
details { margin: 0.5rem 0; } summary { cursor: pointer; font-weight: 600; }
"""


def fmt(value, digits: int = 2) -> str:
    """A number for a table cell; ``n/a`` when missing.

    >>> fmt(3.14159), fmt(None), fmt(float("nan")), fmt(12, 0)
    ('3.14', 'n/a', 'n/a', '12')
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a" if value in (None, "") else str(value)
    if not math.isfinite(number):
        return "n/a"
    return f"{number:.{digits}f}"


def fmt_p(value) -> str:
    """A p value: two significant digits, never rounded to 0.

    >>> fmt_p(0.0123), fmt_p(1e-300), fmt_p(0.0), fmt_p(None)
    ('0.012', '1e-300', '< 1e-300', 'n/a')
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        return "n/a"
    if not math.isfinite(number):
        return "n/a"
    return "< 1e-300" if number == 0 else f"{number:.2g}"


@functools.lru_cache(maxsize=None)
def environment():
    import jinja2

    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters["fmt"] = fmt
    env.filters["fmt_p"] = fmt_p
    env.globals["css"] = CSS
    return env


@functools.lru_cache(maxsize=None)
def compiled(template: str):
    """The template compiled once per process (0.2 s for the participant report's)."""
    return environment().from_string(template)


def render(template: str, **context) -> str:
    return compiled(template).render(**context)


PAGE_HEAD = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{{ title }}</title>
<style>{{ css | safe }}</style>
</head>
"""

PARTICIPANT = PAGE_HEAD + """<body>
<header>
<h1>Brain-age report: {{ participant_id }}</h1>
<p class="meta">bids_brainage {{ version }} &middot; {{ images | length }} image(s)</p>
{% if images | length > 1 %}
<nav>{% for image in images %}<a href="#{{ image.anchor }}">{{ image.title }}</a>{% endfor %}</nav>
{% endif %}
</header>
<h2 id="summary">Summary</h2>
<table>
<tr><th>image</th><th>status</th><th>model</th><th>predicted age</th><th>interval</th>
<th>age</th><th>gap</th><th>flag</th></tr>
{% for image in images %}
{% for row in image.predictions or [{}] %}
<tr class="{{ image.status }}"><td>{{ image.title }}</td>
<td class="{{ 'status-ok' if image.status == 'ok' else 'status-bad' }}">{{ image.status }}</td>
<td>{{ row.get('model') or 'n/a' }}</td><td class="num">{{ row.get('predicted_age') | fmt(1) }}</td>
<td class="num">{{ row.get('interval_low') | fmt(1) }} &ndash; {{ row.get('interval_high') | fmt(1) }}</td>
<td class="num">{{ row.get('age') | fmt(1) }}</td><td class="num">{{ row.get('brain_age_gap') | fmt(1) }}</td>
<td class="{{ 'status-ok' if row.get('flag') in ('ok', None, 'n/a') else 'status-bad' }}">{{ (row.get('flag') or 'n/a') | replace(';', ', ') }}</td></tr>
{% endfor %}
{% endfor %}
</table>
{% for image in images %}
<section id="{{ image.anchor }}">
<h2>{{ image.title }} <span class="{{ 'status-ok' if image.status == 'ok' else 'status-bad' }}">{{ image.status }}</span></h2>
{% if image.status != 'ok' %}
<div class="alert bad">This image failed: {{ image.message or 'no reason recorded' }}</div>
{% endif %}
{% for warning in image.warnings %}<div class="alert">Warning: {{ warning }}</div>{% endfor %}
{% if image.status == 'ok' and image.reliability %}
<h3>How far to trust this age</h3>
{% if image.reliability.reasons %}
<div class="alert bad flagged">Flagged: {{ image.reliability.reasons | join(', ') }}. The interval
was calibrated on images like the training pool's; for this image it is not calibrated and the
prediction is an indication, not a measurement.</div>
{% elif image.reliability.calibrated %}
<p class="status-ok">Not flagged: every check below is within the training pool's range.</p>
{% else %}<p>The model card has no reliability limits: nothing can be said.</p>{% endif %}
{% set q = image.reliability.quantities or {} %}
<table class="reliability"><tr><th>check</th><th>this image</th><th>limit</th></tr>
{% if q.members_spread is defined %}<tr><td>members' spread (sd, years)</td><td class="num">{{ q.members_spread | fmt(1) }}</td><td class="num">&le; {{ q.members_spread_limit | fmt(1) }}</td></tr>{% endif %}
{% if q.training_distance is defined %}<tr><td>distance from the training images</td><td class="num">{{ q.training_distance | fmt(2) }}</td><td class="num">&le; {{ q.training_distance_limit | fmt(2) }}</td></tr>{% endif %}
{% if q.registration_dice is defined %}<tr><td>registration overlap (Dice)</td><td class="num">{{ q.registration_dice | fmt(3) }}</td><td class="num">&ge; {{ q.registration_dice_min | fmt(3) }}</td></tr>{% endif %}
{% if q.mask_volume_ratio is defined %}<tr><td>brain mask / template brain</td><td class="num">{{ q.mask_volume_ratio | fmt(3) }}</td><td class="num">{{ (q.mask_volume_ratio_range or [None, None])[0] | fmt(3) }} &ndash; {{ (q.mask_volume_ratio_range or [None, None])[1] | fmt(3) }}</td></tr>{% endif %}
{% if q.tissue_contrast_z_range is defined %}<tr><td>grey/white contrast: tissue spacing (z against the pool at this age)</td><td class="num">{{ q.tissue_contrast | fmt(2) }} (z {{ q.tissue_contrast_z | fmt(1) }})</td><td class="num">z {{ q.tissue_contrast_z_range[0] | fmt(1) }} &ndash; {{ q.tissue_contrast_z_range[1] | fmt(1) }}</td></tr>{% endif %}
{% if q.training_age_range is defined %}<tr><td>training ages</td><td>{{ q.get('outside_training_ages', []) | join(', ') or 'inside' }}</td><td class="num">{{ q.training_age_range[0] | fmt(0) }} &ndash; {{ q.training_age_range[1] | fmt(0) }}</td></tr>{% endif %}
</table>
{% endif %}
{% if image.contributions %}
<h3>Why this age</h3>
{% if image.contributions.members %}
<p>What moved the {{ image.contributions.of }}'s prediction, by region (DLMUSE atlas), in
years: each member's map times its weight (its ensemble weight times the recalibration slopes
of the member and the ensemble: the years of the reported age per year of the member's raw output),
{% for name, m in image.contributions.members.items() %}{{ name }} by {{ m.method }}
(weight {{ m.weight | fmt(2) }}{% if m.total_years is not none %}, {{ m.total_years | fmt(1) }} y from the training mean{% endif %}){% if not loop.last %}; {% endif %}{% endfor %}.
Linear contributions add up to the member's distance from the training mean; occlusion values
are sensitivities (the prediction without the region) and need not.</p>
{% else %}
<p>The {{ image.contributions.model }} model's part of the {{ image.contributions.of }}
(weight {{ image.contributions.weight | fmt(2) }}) moved the prediction
{{ image.contributions.total_years | fmt(1) }} years from the training mean; by region
(DLMUSE atlas), in years:</p>
{% endif %}
<table class="contributions"><tr><th>older-looking</th><th>years</th><th>younger-looking</th><th>years</th></tr>
{% for i in range([image.contributions.older | length, image.contributions.younger | length] | max) %}
<tr><td>{{ image.contributions.older[i].region if i < image.contributions.older | length else '' }}</td>
<td class="num">{{ image.contributions.older[i].years | fmt(2) if i < image.contributions.older | length else '' }}</td>
<td>{{ image.contributions.younger[i].region if i < image.contributions.younger | length else '' }}</td>
<td class="num">{{ image.contributions.younger[i].years | fmt(2) if i < image.contributions.younger | length else '' }}</td></tr>
{% endfor %}
</table>
{% endif %}
{% for figure in image.figures %}
<figure><img src="{{ figure.uri }}" alt="{{ figure.alt }}" width="{{ figure.width }}" height="{{ figure.height }}">
<figcaption>{{ figure.caption }}</figcaption></figure>
{% endfor %}
{% for problem in image.figure_problems %}<div class="alert">{{ problem }}</div>{% endfor %}
{% if image.timings %}
<h3>Processing times</h3>
<table><tr><th>stage</th><th>seconds</th></tr>
{% for stage, seconds in image.timings.items() %}<tr><td>{{ stage }}</td><td class="num">{{ seconds | fmt(1) }}</td></tr>{% endfor %}
<tr><th>total</th><th class="num">{{ image.total_time | fmt(1) }}</th></tr></table>
{% endif %}
</section>
{% endfor %}
<footer><p>Figures: bias-corrected T1w with the brain mask outline; the brain normalised
to MNI152NLin2009aSym (ICBM 2009a nonlinear symmetric template) with the template outline;
the histogram of normalised brain intensities the models read. Orientation letters:
L/R left/right, P/A posterior/anterior, I/S inferior/superior.</p></footer>
</body>
</html>
"""

METRIC_HEAD = """<tr><th rowspan="2">{{ first }}</th><th rowspan="2">N</th>
<th colspan="8">raw</th><th colspan="4">bias-corrected</th></tr>
<tr><th>MAE</th><th>RMSE</th><th>R&sup2;</th><th>r</th><th>95 % CI of r</th><th>p</th>
<th>mean gap (SD)</th><th>r(gap, age)</th><th>MAE</th><th>R&sup2;</th><th>mean gap (SD)</th>
<th>r(gap, age)</th></tr>"""

METRIC_ROW = """{% macro metric_row(label, block) %}
{% set raw = block.raw %}{% set cor = block.get('corrected') %}
<tr><td>{{ label }}</td><td class="num">{{ block.N }}</td>
<td class="num">{{ raw.MAE | fmt }}</td><td class="num">{{ raw.RMSE | fmt }}</td>
<td class="num">{{ raw.R2 | fmt(3) }}</td><td class="num">{{ raw.pearson_r.r | fmt(3) }}</td>
<td class="num">{{ raw.pearson_r.ci95[0] | fmt(3) }} &ndash; {{ raw.pearson_r.ci95[1] | fmt(3) }}</td>
<td class="num">{{ raw.pearson_r.p | fmt_p }}</td>
<td class="num">{{ raw.mean_gap | fmt }} ({{ raw.sd_gap | fmt }})</td>
<td class="num">{{ raw.r_gap_age | fmt(3) }}</td>
{% if cor %}<td class="num">{{ cor.MAE | fmt }}</td><td class="num">{{ cor.R2 | fmt(3) }}</td>
<td class="num">{{ cor.mean_gap | fmt }} ({{ cor.sd_gap | fmt }})</td>
<td class="num">{{ cor.r_gap_age | fmt(3) }}</td>
{% else %}<td colspan="4">no correction</td>{% endif %}</tr>
{% endmacro %}"""

GROUP = METRIC_ROW + PAGE_HEAD + """<body>
<header>
<h1>Brain-age group report</h1>
<p class="meta">bids_brainage {{ version }} &middot; {{ counts.participants }} participants,
{{ counts.images }} images &middot; {{ counts.images_failed }} failed,
{{ counts.images_unreadable }} unreadable, {{ counts.images_without_prediction }} without a
prediction, {{ counts.images_without_age }} without an age,
{{ counts.participants_missing }} without any output</p>
<nav><a href="#metrics">Metrics</a><a href="#figures">Figures</a><a href="#failed">Failed</a>
<a href="#flagged">Flagged</a><a href="#range">Outside training ages</a><a href="#unused">Without age / missing</a></nav>
</header>
{% if bias_fit == 'cohort' %}
<div class="alert bad loud">Bias correction was REFITTED ON THIS COHORT (--bias-fit cohort).
The corrected gaps are uncorrelated with age by construction and real age-related effects
in this cohort are removed with the bias; corrected metrics are optimistic.</div>
{% endif %}
{% for warning in warnings %}<div class="alert">{{ warning }}</div>{% endfor %}
<h2 id="metrics">Metrics</h2>
<p>Images with a known age and a prediction. MAE, RMSE and the gap in years; r is Pearson's
correlation of predicted and chronological age (95 % CI by Fisher's z); r(gap, age) shows
the age bias the correction removes.</p>
{% for name, model in models.items() %}
<h3>{{ name }}</h3>
<p class="meta">Training ages: {{ notes[name].training }}. Bias correction: {{ notes[name].bias }}.</p>
<table>
""" + METRIC_HEAD.replace("{{ first }}", "subset") + """
{{ metric_row('all', model.overall) }}
{% if model.get('within_training_range') %}{{ metric_row('within training ages', model.within_training_range) }}{% endif %}
{% if model.get('unflagged') %}{{ metric_row('unflagged (' ~ model.n_flagged ~ ' flagged left out)', model.unflagged) }}{% endif %}
{% for column in ('site', 'sex') %}{% for value, block in (model.get('by_' ~ column) or {}).items() %}
{{ metric_row(column ~ ' ' ~ value, block) }}
{% endfor %}{% endfor %}
</table>
{% endfor %}
<h2 id="figures">Figures</h2>
{% for figure in figures %}
<figure><img src="{{ figure.uri }}" alt="{{ figure.alt }}" width="{{ figure.width }}" height="{{ figure.height }}">
<figcaption>{{ figure.caption }}</figcaption></figure>
{% endfor %}
{% for problem in figure_problems %}<div class="alert">{{ problem }}</div>{% endfor %}
<h2 id="failed">Failed, unreadable or unpredicted images ({{ failed | length }})</h2>
{% if failed %}
<table><tr><th>image</th><th>status</th><th>reason</th><th>file</th></tr>
{% for row in failed[:limit] %}<tr class="{{ row.status }}"><td>{{ row.image }}</td><td>{{ row.status }}</td>
<td>{{ row.message or 'n/a' }}</td><td>{{ row.source }}</td></tr>{% endfor %}
</table>
{% if failed | length > limit %}<p>&hellip; and {{ failed | length - limit }} more: see group_brainage.tsv.</p>{% endif %}
{% else %}<p>None.</p>{% endif %}
<h2 id="flagged">Flagged predictions ({{ flagged | length }})</h2>
<p>Images whose prediction the participant level flagged (the flag column): its models
disagree, it is unlike the training images, its age is outside the training ages, or its
registration or skull strip is outside the training pool's range. They stay in the metrics
above; the "unflagged" rows leave them out.</p>
{% if flagged %}
<table><tr><th>image</th><th>reasons</th></tr>
{% for row in flagged[:limit] %}<tr class="flagged"><td>{{ row.image }}</td><td>{{ row.reasons | join(', ') }}</td></tr>{% endfor %}
</table>
{% if flagged | length > limit %}<p>&hellip; and {{ flagged | length - limit }} more: see group_brainage.tsv.</p>{% endif %}
{% else %}<p>None.</p>{% endif %}
<h2 id="range">Outside the training age range ({{ out_of_range | length }})</h2>
<p>Flagged, not hidden: these images are in the metrics above; a model extrapolates here.</p>
{% if out_of_range %}
<table><tr><th>image</th><th>model</th><th>age</th><th>training ages</th><th>predicted</th><th>gap</th></tr>
{% for row in out_of_range[:limit] %}<tr><td>{{ row.image }}</td><td>{{ row.model }}</td>
<td class="num">{{ row.age | fmt(1) }}</td><td>{{ row.span }}</td>
<td class="num">{{ row.predicted_age | fmt(1) }}</td><td class="num">{{ row.brain_age_gap | fmt(1) }}</td></tr>{% endfor %}
</table>
{% if out_of_range | length > limit %}<p>&hellip; and {{ out_of_range | length - limit }} more: see group_brainage.tsv.</p>{% endif %}
{% else %}<p>None{% if not any_range %} (no model card gives a training age range){% endif %}.</p>{% endif %}
<h2 id="unused">Without an age, or without any output</h2>
<p>Images without an age keep their predictions in group_brainage.tsv and are left out of the
metrics ({{ without_age | length }}): {{ without_age[:limit] | join(', ') or 'none' }}{% if without_age | length > limit %} &hellip;{% endif %}.</p>
<p>Participants of the dataset with no participant-level output ({{ missing | length }}):
{{ missing[:limit] | join(', ') or 'none' }}{% if missing | length > limit %} &hellip;{% endif %}.</p>
<footer><p>Tables: group_brainage.tsv / .csv (one row per image and model), metrics:
group_brainage.json. Bias correction after de Lange &amp; Cole (2020): corrected predicted age
= (predicted &minus; intercept) / slope.</p></footer>
</body>
</html>
"""
