"""GenPRM factory: framework-free pipeline logic, grouped so the tree shows the architecture.

- ``stages/``: one module per DVC stage (config, ``run``, ``main``); only the CLI imports them.
- ``method/``: the GenPRM method (Monte Carlo + RPE, rationales, critique loop, scorer, metrics, ...).
- ``world/``: the offline small world (synthetic problems, small models, pretraining).
- ``data/``: record schemas, sources, I/O, journal and shards, quality suites.
- ``platform/``: config, params, errors, tracking, registry, pyfunc, dvc.yaml, CLI.
- ``backends/``: generation backends behind one interface.
- ``sandbox/``: execution of model-written code.
"""
