"""``bids_brainage-web``: a lab's brain-age web service over the BIDS App's own workflow.

A person uploads one T1w (``.nii``, ``.nii.gz`` or a ``.zip`` of one DICOM series), a celery
worker runs the participant workflow on it, and the job page shows the live status and then
the ages, the participant report and the downloads.

Where things live:

- ``settings.py``  WebSettings: every option, with its environment variable and default
- ``cli.py``       the ``bids_brainage-web serve | worker`` entry point
- ``jobs.py``      the job store on disk: ids, ``job.json`` state, locks, queue order, purge
- ``uploads.py``   streaming a multipart upload into the job folder and checking it
                   (file name, size, NIfTI via :func:`bids_brainage.io.load_t1w`, DICOM zip
                   via dcm2niix)
- ``app.py``       the Starlette app: HTML pages and the JSON API
- ``pages.py``     the pages' Jinja2 templates (strings, inline CSS and JS, no build step)
- ``queue.py``     the celery app, the ``run_job`` task, worker start-up and recovery
- ``preload.py``   what each worker process loads once: torch, deepbet, cards and models
- ``runner.py``    one job: lay out a one-participant BIDS dataset, run the workflow, package
"""
