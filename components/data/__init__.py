"""Data between stages: the record schemas (``records``, the one schema module), problem sources,
file I/O, the crash-safe journal and shards (``journal``, ``shards``), content fingerprints of files,
model directories and hub ids (``fingerprints``), and the Great Expectations suites (``quality*``).

Imports ``platform`` (config, errors) and ``method.grading`` (answers from source files); never a stage.
"""
