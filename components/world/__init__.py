"""The offline small world: seeded synthetic problems (with ProcessBench-style injected errors), the
small tokenizer and decoder models, and their pretraining.

Imports ``method`` (prompts, grading), ``backends``, ``data`` and ``platform``; never a stage.
"""
