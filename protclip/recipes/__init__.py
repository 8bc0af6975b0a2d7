"""The jobs: one module per ``jobs/*.py`` entry point, each holding the job's root config, its driver
(``main(argv)`` and the ``run_*`` function it calls) and the Ray Train / Ray Data assembly.

This is the top layer: recipes import the library (``train``, ``eval``, ``finetune``, ``data``, ...), and nothing
in the library imports a recipe, so the training, evaluation and fine-tuning code stays usable without a job.
"""
