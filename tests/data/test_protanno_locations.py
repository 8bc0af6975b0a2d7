"""ProtAnno SUBCELLULAR LOCATION text -> DeepLoc class, on real UniProt entries (the zero-shot location labels)."""

from __future__ import annotations

import pytest

from protclip.data.formats.protanno import DEEPLOC_CLASSES, location_label, protanno_locations
from protclip.data.uniprot import parse_file
from protclip.paths import shared_data_dir

# accession -> (class or None, reason) for real corpus entries, one per rule and per kind of refusal
EXPECTED = {
    "Q8THH1": ("Cytoplasm", ""),  # "Cytoplasm {ECO:...}." (evidence stripped)
    "P10477": ("Extracellular", ""),  # "Secreted"
    "Q7PMG3": ("Cell.membrane", ""),  # "Cell membrane; Multi-pass membrane protein" (topology dropped)
    "Q7PYI4": ("Lysosome/Vacuole", ""),  # "Lysosome. Note=Blood cell lysosomes." (note ignored)
    "Q42029": ("Plastid", ""),  # "Plastid, chloroplast thylakoid lumen"
    "Q8RYC8": ("Nucleus", ""),
    "F4HVY0": ("Endoplasmic.reticulum", ""),  # "Endoplasmic reticulum membrane"
    "P15505": ("Mitochondrion", ""),
    "Q10567": ("Golgi.apparatus", ""),  # Golgi + an unmapped vesicle statement: one class
    "Q86WA8": ("Peroxisome", ""),  # "Peroxisome matrix"
    "I9U7L5": (None, "no subcellular location"),
    "Q5TWL7": (None, "location outside the DeepLoc classes"),  # "Membrane" alone is not a DeepLoc class
    "Q9LQM7": (None, "several DeepLoc classes"),  # "Cytoplasm. Nucleus." is not single-label
}


@pytest.fixture(scope="module")
def corpus():
    records = parse_file(shared_data_dir() / "uniprot_corpus" / "uniprot_corpus.dat.gz").records
    return {r.accession: r for r in records}


@pytest.mark.parametrize("accession", sorted(EXPECTED))
def test_real_entries_map_to_their_deeploc_class(corpus, accession):
    assert location_label(corpus[accession].subcellular_location) == EXPECTED[accession]


def test_every_class_is_reachable_and_counts_add_up(corpus):
    recs = list(corpus.values())
    data = protanno_locations([r.accession for r in recs], [r.sequence for r in recs],
                              [r.subcellular_location for r in recs], "corpus")
    assert set(data.labels) <= set(DEEPLOC_CLASSES)
    assert {c for c, _ in EXPECTED.values() if c} == set(DEEPLOC_CLASSES)  # the table above covers every class
    assert len(data) + sum(data.dropped.values()) == len(recs)  # every entry labelled or counted, none lost
    assert len(data) > 0.3 * len(recs)


def test_isoform_prefix_and_qualifiers_are_stripped():
    text = "SUBCELLULAR LOCATION: [Isoform 2]: Cytoplasm, cytosol (Probable). Note=Nuclear in some cells."
    assert location_label(text) == ("Cytoplasm", "")
    assert location_label("SUBCELLULAR LOCATION: Cytoplasmic vesicle.") == (
        None, "location outside the DeepLoc classes")  # a prefix of a word is not the class
