"""Plumbing every stage shares: typed configs and the params registry, errors, the one MLflow adapter
(``tracking``), the model registry and pyfunc, ``dvc.yaml`` reading, and the ``genprm`` CLI.

Only ``cli`` imports stages (lazily, the one it runs); the rest imports no stage.
"""
