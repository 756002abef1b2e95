"""One module per DVC stage: its frozen config, ``run`` (the logic) and ``main`` (the thin entry point).

``dvc.yaml``, the Prefect flows (through ``dvc repro``) and the ``genprm`` CLI all call ``main``. Only the
CLI imports these modules: a stage imports ``method``, ``world``, ``data``, ``backends``, ``sandbox`` and
``platform``, never another stage, so its import closure (its DVC deps) is what it runs.
"""
