"""The GenPRM method itself, framework-free: Monte Carlo estimates and RPE labels, the rationale format,
the execute-and-continue critique loop, teachers, the GenPRM scorer, the ProcessBench metric,
Best-of-N selection, grading, prompts and SFT records.

Imports ``backends``, ``sandbox``, ``data`` and ``platform`` (config, errors); never a stage.
"""
