"""The 20 standard amino acids in the column order used by ``Embedder.mlm_log_probs``."""

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
AA_INDEX = {a: i for i, a in enumerate(AMINO_ACIDS)}
