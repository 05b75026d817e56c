"""Participant-level nipype workflows, built by ``init_*_wf`` factories (sMRIPrep style)."""
from __future__ import annotations

from nipype.interfaces import utility as niu
from nipype.pipeline import engine as pe

from bids_brainage.interfaces.derivatives import DerivativesSink
from bids_brainage.interfaces.predict import Predict
from bids_brainage.interfaces.reports import ParticipantReport
from bids_brainage.interfaces.preproc import (
    N4,
    Conform,
    LargestComponent,
    Normalize,
    Register,
    SkullStrip,
)

STAGES = ("conform", "skull_strip", "largest_component", "n4", "register", "normalize",
          "predict")


def _collect_timings(conform, skull_strip, largest_component, n4, register, normalize,
                     predict=0.0):
    return {"conform": conform, "skull_strip": skull_strip,
            "largest_component": largest_component, "n4": n4, "register": register,
            "normalize": normalize, "predict": predict}


def init_preproc_wf(*, settings, name: str = "preproc_wf") -> pe.Workflow:
    """Conform → skull strip → largest component → N4 → MNI registration → normalisation.

    inputnode: ``t1w``. outputnode: ``mask``, ``t1w_preproc`` (N4, native), ``mni`` (brain,
    2 mm MNI grid, not normalised), ``mni_mask``, ``mni_affine`` / ``mni_affine_mask`` (the
    same through the affine alone: the models' input), ``mni_norm``, ``normalization_json``,
    ``affine_file``, ``warp_file``, ``skull_strip_method``, and each stage's ``*_seconds``.
    """
    workflow = pe.Workflow(name=name)
    threads = settings.omp_nthreads
    inputnode = pe.Node(niu.IdentityInterface(fields=["t1w"]), name="inputnode")
    fields = ["mask", "t1w_preproc", "mni", "mni_mask", "mni_affine", "mni_affine_mask",
              "mni_norm", "normalization_json", "affine_file", "warp_file", "skull_strip_method"]
    outputnode = pe.Node(
        niu.IdentityInterface(fields=fields + [f"{s}_seconds" for s in STAGES[:-1]]),
        name="outputnode",
    )
    conform = pe.Node(Conform(), name="conform", mem_gb=0.5)
    skull_strip = pe.Node(SkullStrip(method=settings.skull_strip, threads=threads),
                          name="skull_strip", mem_gb=1.5, n_procs=threads)
    largest_component = pe.Node(LargestComponent(), name="largest_component", mem_gb=0.3)
    n4 = pe.Node(N4(threads=threads), name="n4", mem_gb=0.8, n_procs=threads)
    register = pe.Node(Register(method=settings.registration, threads=threads),
                       name="register", mem_gb=1.0 if settings.registration == "affine" else 2.0,
                       n_procs=threads)
    normalize = pe.Node(Normalize(method=settings.normalization), name="normalize", mem_gb=0.3)

    workflow.connect([
        (inputnode, conform, [("t1w", "in_file")]),
        (conform, skull_strip, [("out_file", "in_file")]),
        (skull_strip, largest_component, [("out_mask", "in_mask")]),
        (conform, n4, [("out_file", "in_file")]),
        (largest_component, n4, [("out_mask", "in_mask")]),
        (n4, register, [("out_brain", "in_brain")]),
        (largest_component, register, [("out_mask", "in_mask")]),
        (register, normalize, [("mni", "in_file"), ("mni_mask", "in_mask")]),
        (largest_component, outputnode, [("out_mask", "mask"),
                                         ("seconds", "largest_component_seconds")]),
        (skull_strip, outputnode, [("method_used", "skull_strip_method"),
                                   ("seconds", "skull_strip_seconds")]),
        (conform, outputnode, [("seconds", "conform_seconds")]),
        (n4, outputnode, [("out_file", "t1w_preproc"), ("seconds", "n4_seconds")]),
        (register, outputnode, [("mni", "mni"), ("mni_mask", "mni_mask"),
                                ("mni_affine", "mni_affine"),
                                ("mni_affine_mask", "mni_affine_mask"),
                                ("affine_file", "affine_file"), ("warp_file", "warp_file"),
                                ("seconds", "register_seconds")]),
        (normalize, outputnode, [("out_file", "mni_norm"), ("out_json", "normalization_json"),
                                 ("seconds", "normalize_seconds")]),
    ])
    return workflow


def init_image_wf(*, image, settings, age, predict: bool = True, name: str,
                  in_process: bool = False) -> pe.Workflow:
    """Preprocess one T1w image, predict its age and write its derivatives. ``in_process``:
    its steps run in one process, one after the other (the registration step may then begin
    the prediction's work)."""
    workflow = pe.Workflow(name=name)
    preproc_wf = init_preproc_wf(settings=settings)
    preproc_wf.inputs.inputnode.t1w = str(image.path)
    timings = pe.Node(
        niu.Function(function=_collect_timings, input_names=list(STAGES),
                     output_names=["timings"]),
        name="timings", run_without_submitting=True,
    )
    timings.inputs.predict = 0.0
    if settings.reports and settings.omp_nthreads > 1:
        # the helper imports the report's plotting now, for the mask figure it will draw
        preproc_wf.get_node("register").inputs.report_threads = settings.omp_nthreads
        if in_process:  # and draws it then, for the report this process's helper draws
            preproc_wf.connect(preproc_wf.get_node("n4"), "out_file",
                               preproc_wf.get_node("register"), "report_head")
    sink = pe.Node(DerivativesSink(
        output_dir=str(settings.output_dir), prefix=image.prefix, anat_dir=str(image.anat_dir),
        participant_id=f"sub-{image.subject}",
        session_id=f"ses-{image.session}" if image.session else "n/a",
        run=image.run or "n/a", age=age,
        source=str(image.path.relative_to(settings.bids_dir)),
        settings={k: v for k, v in settings.to_dict().items() if k != "run_uuid"},
    ), name="ds_brainage", run_without_submitting=True, overwrite=True)
    workflow.connect([
        (preproc_wf, sink, [
            ("outputnode.mask", "mask"), ("outputnode.t1w_preproc", "t1w"),
            ("outputnode.mni_norm", "mni_norm"), ("outputnode.mni_mask", "mni_mask"),
            ("outputnode.affine_file", "affine_file"), ("outputnode.warp_file", "warp_file"),
            ("outputnode.normalization_json", "normalization_json"),
            ("outputnode.skull_strip_method", "skull_strip_method"),
        ]),
        (preproc_wf, timings, [(f"outputnode.{s}_seconds", s) for s in STAGES[:-1]]),
        (timings, sink, [("timings", "timings")]),
    ])
    if predict:
        from bids_brainage.models.registry import cards_sha256, selected_features

        if settings.omp_nthreads > 1 and "tissue" in selected_features(settings.model_dir,
                                                                        settings.models):
            # the tissue warp's own process loads while the registration keeps one core
            preproc_wf.get_node("register").inputs.tissue_warp_threads = settings.omp_nthreads
            # and the warp begins there, for this process's prediction
            preproc_wf.get_node("register").inputs.begin_tissue = in_process

        predictor = pe.Node(Predict(
            model_dir=str(settings.model_dir or ""), models=list(settings.models),
            cards_sha256=cards_sha256(settings.model_dir),
            threads=settings.omp_nthreads, age=age,
        ), name="predict", mem_gb=1.0, n_procs=settings.omp_nthreads)
        workflow.connect([
            # every model was trained on affinely registered brains: with --registration
            # syn they still get the affine image, not the SyN-warped one
            (preproc_wf, predictor, [("outputnode.mni_affine", "mni"),
                                     ("outputnode.mni_affine_mask", "mni_mask")]),
            (predictor, sink, [("out_json", "predictions_json"),
                               ("contrib_map", "contrib_map")]),
            (predictor, timings, [("seconds", "predict")]),
        ])
    return workflow


def init_participant_wf(*, images, settings, ages: dict, predict: bool = True,
                        name: str = "bids_brainage_wf") -> pe.Workflow:
    """One sub-workflow per T1w image; nipype runs them in parallel and caches each step.
    With reports, one report node per participant after all its images."""
    from bids_brainage.levels.participant import runs_in_this_process

    workflow = pe.Workflow(name=name, base_dir=str(settings.work_dir))
    image_wfs = {}
    in_process = runs_in_this_process(settings, images)
    for image in images:
        image_wfs[image] = init_image_wf(image=image, settings=settings,
                                         age=ages.get(f"sub-{image.subject}"),
                                         predict=predict, name=f"{image.node_name}_wf",
                                         in_process=in_process)
        workflow.add_nodes([image_wfs[image]])
    if settings.reports:
        subjects = sorted({image.subject for image in images})
        for subject in subjects:
            mine = [image for image in images if image.subject == subject]
            _connect_report(workflow, subject, mine, [image_wfs[im] for im in mine], settings)
    return workflow


def _connect_report(workflow, subject: str, images, image_wfs, settings) -> None:
    label = subject.replace("+", "_plus_")  # a BIDS label is [a-zA-Z0-9+]; a node name not
    report = pe.Node(ParticipantReport(
        output_dir=str(settings.output_dir), work_dir=str(settings.work_dir), subject=subject,
        prefixes=[im.prefix for im in images], anat_dirs=[str(im.anat_dir) for im in images],
        threads=settings.omp_nthreads,
    ), name=f"report_sub{label}", mem_gb=0.5)
    tables = pe.Node(niu.Merge(len(images)), name=f"tables_sub{label}",
                     run_without_submitting=True)
    for number, image_wf in enumerate(image_wfs, 1):
        workflow.connect(image_wf, "ds_brainage.out_tsv", tables, f"in{number}")
    workflow.connect(tables, "out", report, "tables")
