"""Search a proteome by function text, and annotate proteins with texts: the embedding outputs, FAISS indexes
and the query API behind ``jobs/embed.py``, ``jobs/index.py`` and ``python -m protclip search``.

Modules: :mod:`readers` (inputs from any URI), :mod:`embedding` (the joint-space embedder, as the eval suites
use it), :mod:`shards` (Parquet shards + manifest), :mod:`identity` (model checksum, mismatch errors),
:mod:`index` (FAISS build/save/load/query), :mod:`api` (:class:`Searcher`), :mod:`cli`. No Ray here: the jobs in
``protclip/recipes`` distribute the work.
"""

from protclip.search.api import Query, Searcher, annotate_fasta, search_text
from protclip.search.identity import IndexModelMismatch

__all__ = ["Searcher", "Query", "search_text", "annotate_fasta", "IndexModelMismatch"]
