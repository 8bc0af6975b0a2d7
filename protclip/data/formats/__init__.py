"""Readers for the downstream benchmark files (formats documented here and in docs/eval.md).

Every reader validates as it goes. Bad input raises :class:`FormatError` naming the file, the record (line or
row) and the field; with ``on_error="skip"`` malformed records are dropped instead, and counted and listed in
the result's ``errors`` so the caller can report them.

Formats
- Labelled FASTA, DeepLoc style: ``>ACCESSION Location-M|S|U [test]`` (DeepLoc 1.0 / Light-Attention
  release; the optional 4th token marks the test split). ``label="location"`` gives the 10-class label,
  ``label="membrane"`` the M/S label (U records are dropped and counted).
- Labelled FASTA, plain: ``>ID label`` where label is the rest of the header (``;``-separated for multi-label,
  a number for regression).
- Tables (``.csv``, ``.tsv``, ``.parquet``): a sequence column, a label column and optionally id / split
  columns. Multi-label cells are ``;``-separated strings or (parquet) lists.
- Mutation tables: ``mutant`` like ``A123G`` or ``A123G:K45R`` (1-based positions, numbering starting at
  ``first_position``), a ``score`` column, and the wild type either given once or per row in a column.
- PPI pair tables: ``seq_a``/``seq_b`` or ``id_a``/``id_b`` (ids resolved through a FASTA or 2-column TSV
  sequence map, as in GNN-PPI's ``*.sequences.dictionary.tsv``) plus a 0/1 ``label``.
"""

from protclip.data.formats.core import (
    TASK_TYPES,
    FastaRecord,
    FormatError,
    LabeledSequences,
    clean_sequence,
    parse_label,
    read_fasta,
    read_table_frame,
    table_format,
)
from protclip.data.formats.labeled import read_deeploc_fasta, read_labeled, read_labeled_fasta, read_table
from protclip.data.formats.mutations import (
    Mutation,
    MutationSet,
    check_against_wt,
    parse_mutant,
    read_mutations,
)
from protclip.data.formats.ppi import PairSet, read_ppi_pairs, read_sequence_map

__all__ = [
    "TASK_TYPES",
    "FastaRecord",
    "FormatError",
    "LabeledSequences",
    "Mutation",
    "MutationSet",
    "PairSet",
    "check_against_wt",
    "clean_sequence",
    "parse_label",
    "parse_mutant",
    "read_deeploc_fasta",
    "read_fasta",
    "read_labeled",
    "read_labeled_fasta",
    "read_mutations",
    "read_ppi_pairs",
    "read_sequence_map",
    "read_table",
    "read_table_frame",
    "table_format",
]
