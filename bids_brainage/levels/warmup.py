"""Loading ahead: what a run's steps import and load, done once per process and, where it can
be, while the process waits for something else.

- :func:`start_warm_up`: a thread that imports torch and loads deepbet's model (the first big
  step; with several threads the run's helper process does that, :mod:`bids_brainage.helper`),
  then nipype and the workflow's interfaces, the libraries of the later steps (SimpleITK,
  antspyx, scikit-learn), fills the template caches, loads the selected models' weights and
  imports the report's plotting. It runs while the main thread waits for the BIDS validator
  (a process of its own) and during the first steps, but not while deepbet's network runs in
  the helper on every core (:func:`bids_brainage.helper.hold_off`: a third busy thread made
  that wait 0.5 s longer); a process that runs the steps itself (one image) then finds
  them loaded.
- :func:`keep_models_loaded`: a process that predicts many images (a nipype worker, a web
  worker) loads each model once; the weight file is still checked against its card's sha256
  at every use.
- :data:`FORKSERVER_PRELOAD`: modules nipype's worker processes inherit already imported.

Nothing here changes a number: the same functions run on the same data, only earlier.
"""
from __future__ import annotations

import importlib
import logging
import threading

from bids_brainage.timeline import mark

LOG = logging.getLogger("bids_brainage.participant")
# what the steps import, in the order they need it (torch only when deepbet may run)
STEP_MODULES = ("SimpleITK", "ants", "scipy.ndimage", "sklearn.mixture")
FORKSERVER_PRELOAD = ("nipype.pipeline.engine", "bids_brainage.interfaces.preproc",
                      "bids_brainage.interfaces.predict", "bids_brainage.interfaces.derivatives",
                      "bids_brainage.preproc.skullstrip", *STEP_MODULES)


def needs_deepbet(settings) -> bool:
    """Whether skull stripping may run deepbet (``auto`` decides per image)."""
    return settings.skull_strip != "none"


class WarmUp(threading.Thread):
    """Loads ahead in a daemon thread (deepbet first: a step that needs it meanwhile waits
    for this load, ``preproc.skullstrip._deepbet``); :meth:`stop` ends it after the current
    item (a run that ends early should not leave an import running while the interpreter
    exits)."""

    def __init__(self, settings):
        super().__init__(name="warm-up", daemon=True)
        self.settings = settings
        self._stopping = threading.Event()

    def _items(self):
        threads = max(1, self.settings.omp_nthreads)
        if needs_deepbet(self.settings):
            def deepbet():
                from bids_brainage.helper import load_ahead

                # skull stripping runs in the helper: it loads there, now (else here)
                if threads > 1 and load_ahead(threads, "bids_brainage.preproc.skullstrip",
                                              "prepare_deepbet", threads):
                    return
                from bids_brainage.preproc.skullstrip import prepare_deepbet

                prepare_deepbet(threads)
            yield deepbet
        # nipype and the interfaces (the workflow is built from them once the validator
        # has answered: the main thread waits for it meanwhile), then the steps' libraries
        for name in ("bids_brainage.workflows.participant", *STEP_MODULES):
            yield _importing(name)

        def caches():
            from bids_brainage.features import tissue
            from bids_brainage.models.registry import selected_features
            from bids_brainage.preproc.template import template_2mm

            template_2mm()
            tissue.tissue_priors()
            if threads == 1 and "tissue" in selected_features(self.settings.model_dir,
                                                              self.settings.models):
                # the warp's target, built once per process (with more threads, the helper
                # builds it: the registration step asks it to)
                tissue._fixed()  # noqa: SLF001
        yield caches

        def models():
            # the weights (rf_sites' forest is 7 MB of pickle: 0.6 s to load), read while
            # the steps run, into the cache the prediction step reads
            from bids_brainage.models.predict import _loaded
            from bids_brainage.models.registry import load_cards, select_models, verified_file

            cards = load_cards(self.settings.model_dir)
            for name in select_models(cards, self.settings.models):
                if cards[name].get("kind") in ("forest", "ridge"):
                    _loaded(str(verified_file(cards[name])), cards[name].get("sha256"))
        yield models
        if self.settings.reports:  # the report's first figure loads fonts, writers: ~0.5 s
            def figures():
                from bids_brainage.reports.participant import (
                    prepare_figures,
                    prepare_registration_figure,
                )

                prepare_figures()
                prepare_registration_figure(self.settings.work_dir)
            yield figures

    def run(self) -> None:
        from bids_brainage.helper import hold_off

        try:
            for item in self._items():
                hold_off()  # not while deepbet's network runs on the cores, in the helper
                if self._stopping.is_set():
                    break
                mark("warm_up_start", item=item.__name__)
                item()
                mark("warm_up_end", item=item.__name__)
        except Exception as exc:  # noqa: BLE001 - the step itself will meet it and say so
            LOG.debug("warm-up stopped: %s: %s", type(exc).__name__, exc)

    def stop(self) -> None:
        self._stopping.set()
        self.join()


def _importing(module: str):
    def load():
        importlib.import_module(module)

    load.__name__ = f"import {module}"
    return load


def start_warm_up(settings) -> WarmUp:
    """Start loading ahead for a run whose steps this process runs itself."""
    warm = WarmUp(settings)
    warm.start()
    return warm


def keep_models_loaded(threads: int, *, load_defaults: bool = True) -> list[str]:
    """Cache the loaded models in this process (and, with ``load_defaults``, load the bundled
    default models now); returns the names loaded now."""
    from bids_brainage.models import predict
    from bids_brainage.models.registry import default_models, load_cards, verified_file

    original = getattr(predict.load_predictor, "__wrapped__", predict.load_predictor)
    loaded: dict[tuple, object] = {}

    def load_predictor(card: dict, threads: int = 1):
        verified_file(card)  # refuses a file that no longer matches its card
        key = (card["_dir"], card["name"], card.get("sha256"), threads)
        if key not in loaded:
            loaded[key] = original(card, threads)
        return loaded[key]

    load_predictor.__wrapped__ = original
    predict.load_predictor = load_predictor
    if not load_defaults:
        return []
    cards = load_cards()
    names = [n for n in default_models(cards) if cards[n].get("kind") != "ensemble"]
    for name in names:
        load_predictor(cards[name], threads)
    return names
