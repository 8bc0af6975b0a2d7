"""Homology-aware held-out sets: whole sequence clusters go to train / val / test, and no held-out cluster keeps
a homologue in train.

Why clusters: a held-out protein with a 90%-identical sibling in training measures memory, not learning. Why the
sealing pass after the assignment: a clustering (set cover around representatives) is not transitive, so a
member of a held-out cluster can still align above the threshold to a member of a training cluster. Searching
the held-out sequences against the training ones and moving every held-out cluster with a hit to train (repeated
against the newly moved ones until nothing moves) makes "no held-out sequence has a training homologue at the
configured identity and coverage" true for that search, which is the check users run. Pure: no Ray import.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping

from protclip.data.mmseqs import Hit
from protclip.data.splits import hash_unit

SPLITS = ("train", "val", "test")
#: salt of the cluster hash, so the split does not correlate with other hashes of the same ids and seed
_SALT = "holdout-cluster"

Search = Callable[[Mapping[str, str], Mapping[str, str]], list[Hit]]


def cluster_split(representative: str, val_fraction: float, test_fraction: float, seed: int) -> str:
    """The split of a whole cluster, from (seed, representative) alone: stable when other clusters change."""
    u = hash_unit(f"{_SALT}/{representative}", seed)
    if u < test_fraction:
        return "test"
    if u < test_fraction + val_fraction:
        return "val"
    return "train"


def assign_splits(rep_of: Mapping[str, str], val_fraction: float, test_fraction: float,
                  seed: int) -> dict[str, str]:
    """``{accession: representative}`` -> ``{accession: split}``; members of one cluster always share a split."""
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ValueError(f"val_fraction {val_fraction} and test_fraction {test_fraction} must be >= 0 with a sum < 1")
    by_rep = {rep: cluster_split(rep, val_fraction, test_fraction, seed) for rep in set(rep_of.values())}
    return {acc: by_rep[rep] for acc, rep in rep_of.items()}


def seal(split_of: Mapping[str, str], rep_of: Mapping[str, str], sequences: Mapping[str, str],
         search: Search, max_rounds: int = 50) -> tuple[dict[str, str], int, int]:
    """Move every held-out cluster that has a homologue in train to train, until no held-out sequence has one.

    Round 1 searches all held-out sequences against train; each later round searches the remaining held-out ones
    against only the sequences moved in the round before (everything else was searched already). Returns the new
    ``{accession: split}``, the number of clusters moved and the number of rounds.
    """
    split = dict(split_of)
    members: dict[str, list[str]] = {}
    for acc, rep in rep_of.items():
        members.setdefault(rep, []).append(acc)
    targets = {a: sequences[a] for a, s in split.items() if s == "train"}
    moved_clusters = 0
    for rounds in range(1, max_rounds + 1):
        queries = {a: sequences[a] for a, s in split.items() if s != "train"}
        hits = search(queries, targets) if queries and targets else []
        reps = sorted({rep_of[h.query] for h in hits})
        if not reps:
            return split, moved_clusters, rounds
        moved = [a for r in reps for a in members[r]]
        for a in moved:
            split[a] = "train"
        moved_clusters += len(reps)
        targets = {a: sequences[a] for a in moved}
    raise RuntimeError(f"holdout sealing did not settle after {max_rounds} rounds ({moved_clusters} clusters moved)")


def split_counts(split_of: Mapping[str, str], rep_of: Mapping[str, str],
                 rows_per_accession: Mapping[str, int] | None = None) -> dict[str, dict[str, int]]:
    """Clusters and rows per split (a row count per accession covers duplicate accessions in the shards)."""
    clusters: dict[str, set[str]] = {s: set() for s in SPLITS}
    rows: Counter[str] = Counter({s: 0 for s in SPLITS})
    for acc, s in split_of.items():
        clusters[s].add(rep_of[acc])
        rows[s] += 1 if rows_per_accession is None else rows_per_accession[acc]
    return {"clusters": {s: len(clusters[s]) for s in SPLITS}, "rows": {s: int(rows[s]) for s in SPLITS}}


def parse_cluster_tsv(lines: Iterable[str], source: str) -> dict[str, str]:
    """Precomputed membership, ``cluster<TAB>accession`` per line (MMseqs2's ``*_cluster.tsv``, or UniRef50 /
    UniRef90 membership from UniProt's id mapping) -> ``{accession: cluster}``.

    A ``#`` line is a comment; an accession listed under two clusters is an error naming the line.
    """
    rep_of: dict[str, str] = {}
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r\n")
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            raise ValueError(f"{source}: line {n}: expected 'cluster<TAB>accession', got {line[:80]!r}")
        cluster, acc = parts
        if rep_of.setdefault(acc, cluster) != cluster:
            raise ValueError(f"{source}: line {n}: accession {acc} is in two clusters ({rep_of[acc]}, {cluster})")
    return rep_of
