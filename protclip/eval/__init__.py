"""Downstream evaluation: metrics, benchmark file readers, the Embedder protocol and the eval suites.

Everything here is pure (no Ray); ``protclip/eval/tasks.py`` wraps the suites as Ray tasks that log to MLflow.
"""
