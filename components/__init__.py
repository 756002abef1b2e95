"""GenPRM factory: framework-free stage logic.

Each stage module exposes ``run(cfg, ...)`` (pure logic) and ``main(params_path, overrides)`` (the thin
entry point doing file I/O) used alike by ``dvc.yaml``, the Prefect flows and the ``genprm`` CLI.
"""
