"""Data layer: UniProt parsing, the ProtAnno schema, property-driven sampling.

Kept import-free on purpose: Ray workers and tests import only the submodule they need.
"""
