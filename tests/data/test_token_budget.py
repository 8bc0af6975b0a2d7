"""Token-budget micro-batches (``data.batching: packed``): budgets, order, conservation, determinism, resume.

Real UniProt rows through the collate stage (``collate_windows``) with a crop above every sequence's length, so
each packed protein can be decoded back to its row's sequence: every row of an epoch appears in exactly one
micro-batch, across buffers, ranks (deterministic split) and a resume that skips consumed micro-batches.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pytest

from protclip.data.batching import packed_micro_batches, token_budget_batches
from protclip.data.config import DataConfig
from protclip.data.pipeline import iter_micro_batches, make_collator, required_columns
from protclip.data.sampling import SamplingConfig
from protclip.data.schema import record_to_row, rows_to_table
from protclip.data.stages import DETERMINISTIC_FLAG, collate_windows, derive_seed, protein_tokens
from protclip.data.tokenizers import ESM_VOCAB
from protclip.data.uniprot import parse_file
from protclip.model.config import collate_config, tiny_model_config

MAX_TOKENS, MAX_TEXT = 3000, 1024


@pytest.fixture(scope="module")
def table(uniprot_dat) -> pa.Table:
    rep = parse_file(uniprot_dat)
    assert not rep.errors
    return rows_to_table([record_to_row(r) for r in rep.records])


def _cfg(table: pa.Table, **kw) -> DataConfig:
    longest = int(np.max(table.column("length").to_numpy())) + 2
    base = dict(uri="unused", sampling=SamplingConfig(), shuffle_buffer=40, micro_batch_size=4, bucket_window=16,
                max_protein_length=longest, max_text_length=256, max_subtext_length=64, batching="packed",
                max_tokens=max(MAX_TOKENS, longest), max_text_tokens=MAX_TEXT)  # fmt: skip
    return DataConfig(**(base | kw))


def _collate(table: pa.Table, cfg: DataConfig, epoch: int = 0, deterministic: bool = False) -> dict:
    coll = make_collator(cfg, collate_config(tiny_model_config(), data_cfg=cfg))
    t = table.select(required_columns(coll))
    t = t.append_column("epoch", pa.array(np.full(t.num_rows, epoch, dtype=np.int64)))
    out: dict[str, list] = {}
    for s in range(0, t.num_rows, cfg.window_rows):  # one call per shuffle buffer, as Ray Data makes them
        part = collate_windows(t.slice(s, cfg.window_rows), collator=coll, micro_batch_size=cfg.micro_batch_size,
                               bucket_window=cfg.bucket_window, max_protein_length=cfg.max_protein_length,
                               seed=cfg.seed, deterministic=deterministic, batching=cfg.batching,
                               max_tokens=cfg.max_tokens, max_text_tokens=cfg.max_text_tokens)
        for k, v in part.items():
            out.setdefault(k, []).extend(v)
    return out


def _sequences(mb) -> list[str]:
    ids, cu = np.asarray(mb["protein_input_ids"]).reshape(-1), np.asarray(mb["protein_cu_seqlens"])
    return ["".join(ESM_VOCAB[int(t)] for t in ids[cu[i] + 1 : cu[i + 1] - 1]) for i in range(len(cu) - 1)]


def _micro_batches(out: dict) -> list[dict]:
    return [{k: v[i] for k, v in out.items()} for i in range(len(out["batch_key"]))]


def test_token_budget_batches_keep_order_and_budgets():
    p = np.array([5, 9, 3, 8, 2, 7, 10, 1])
    t = np.array([4, 1, 6, 2, 2, 5, 1, 9])
    order = np.array([3, 0, 7, 5, 1, 6, 2, 4])
    groups = token_budget_batches(order, p, t, max_tokens=12, max_text_tokens=10)
    assert np.concatenate(groups).tolist() == order.tolist()  # every row once, shuffled order kept
    assert all(p[g].sum() <= 12 and t[g].sum() <= 10 for g in groups)
    # greedy: a group closes only when the next row overflows a budget
    for g, nxt in zip(groups[:-1], groups[1:], strict=True):
        assert p[g].sum() + p[nxt[0]] > 12 or t[g].sum() + t[nxt[0]] > 10
    with pytest.raises(ValueError, match="above the micro-batch budget"):
        token_budget_batches(order, p, t, max_tokens=9, max_text_tokens=10)


def test_packed_epoch_respects_budgets_and_keeps_every_row_once(table):
    cfg = _cfg(table)
    out = _collate(table, cfg)
    mbs = _micro_batches(out)
    assert len(mbs) > 3
    seen = Counter(s for mb in mbs for s in _sequences(mb))
    assert seen == Counter(str(s) for s in table.column("sequence").to_pylist())  # none lost, none twice
    for mb in mbs:
        assert np.asarray(mb["protein_input_ids"]).shape[1] <= cfg.max_tokens
        assert np.asarray(mb["text_input_ids"]).shape[1] <= cfg.max_text_tokens
        assert int(mb["n_padded_tokens"]) == 0 and int(mb["n_real_tokens"]) == int(mb["protein_cu_seqlens"][-1])
    # budgets are used: all but each buffer's last micro-batch could not take another row of the buffer
    fill = [int(mb["protein_cu_seqlens"][-1]) / cfg.max_tokens for mb in mbs]
    assert np.median(fill) > 0.5
    # deterministic per (seed, epoch): same micro-batches again; another epoch shuffles differently
    again = _collate(table, cfg)
    assert [int(k) for k in again["batch_key"]] == [int(k) for k in out["batch_key"]]
    other = _collate(table, cfg, epoch=1)
    assert [int(k) for k in other["batch_key"]] != [int(k) for k in out["batch_key"]]


class _Shard:
    """A Ray DataIterator stand-in yielding the collate stage's rows as 1-row numpy batches."""

    def __init__(self, out: dict) -> None:
        self.rows = [{k: np.asarray([v]) if np.ndim(v) == 0 else _obj(v) for k, v in mb.items()}
                     for mb in _micro_batches(out)]

    def iter_batches(self, **kw):
        yield from self.rows


def _obj(v) -> np.ndarray:
    col = np.empty(1, dtype=object)
    col[0] = np.asarray(v)
    return col


def test_packed_rows_split_over_ranks_and_resume_without_loss_or_duplicates(table):
    cfg = _cfg(table, split="deterministic")
    out = _collate(table, cfg, deterministic=True)
    assert int(out[DETERMINISTIC_FLAG][0]) == 1
    n, world = len(out["batch_key"]), 2
    ranks = [list(iter_micro_batches(_Shard(out), rank=r, world_size=world)) for r in range(world)]
    assert len(ranks[0]) == len(ranks[1]) == n // world
    got = Counter(s for r in ranks for mb in r for s in _sequences({k: v.numpy() for k, v in mb.items()}))
    dropped = Counter(s for mb in _micro_batches(out)[n - n % world :] for s in _sequences(mb))
    # every row once, except the rows of the epoch's incomplete last group of micro-batches (< world of them)
    assert got + dropped == Counter(str(s) for s in table.column("sequence").to_pylist())
    # resume: skipping the micro-batches consumed before a checkpoint gives exactly the rest
    for r in range(world):
        resumed = list(iter_micro_batches(_Shard(out), rank=r, world_size=world, skip=2))
        assert [int(mb["batch_key"]) for mb in resumed] == [int(mb["batch_key"]) for mb in ranks[r][2:]]
        assert resumed[0]["protein_cu_seqlens"].dtype.is_floating_point is False


def test_packed_config_validation():
    with pytest.raises(ValueError, match="data.batching"):
        DataConfig(batching="sorted")
    with pytest.raises(ValueError, match="data.max_tokens"):
        DataConfig(batching="packed", max_protein_length=4096, max_tokens=2048)
    with pytest.raises(ValueError, match="data.max_text_tokens"):
        DataConfig(batching="packed", max_text_length=512, max_text_tokens=256)
    # bucketed batching reads neither budget, so it does not check them
    lax = DataConfig(max_protein_length=4096, max_tokens=2048, max_text_length=512, max_text_tokens=256)
    assert (lax.max_protein_length, lax.max_tokens, lax.max_text_tokens) == (4096, 2048, 256)
    assert DataConfig().batching == "bucketed"  # the shipped default stays the padded, bucketed path


def test_max_protein_length_default_follows_batching():
    """Packed memory follows the token budget, so its default crop is long; bucketed memory follows
    micro_batch_size x the longest row, so it keeps ESM-2's 1,024-token crop. Set values are kept."""
    packed, bucketed = DataConfig(batching="packed"), DataConfig()
    assert packed.max_protein_length == 4096 and bucketed.max_protein_length == 1024
    assert packed.max_tokens >= packed.max_protein_length  # the defaults pass their own check
    assert packed.max_residues == 4094
    assert DataConfig(batching="packed", max_protein_length=130).max_protein_length == 130
    assert DataConfig(max_protein_length=2048).max_protein_length == 2048


def test_packed_estimate_packs_each_buffer_greedily():
    """The step estimate is the greedy budget rule applied per buffer to a seeded permutation: exactly the count
    ``token_budget_batches`` gives for that permutation cut into buffers."""
    rng = np.random.default_rng(7)
    tokens = rng.integers(3, 131, size=203)
    for max_tokens, window in ((130, 16), (520, 16), (520, 64), (4000, 1000)):
        perm = np.random.default_rng(11).permutation(tokens.size)
        want = sum(len(token_budget_batches(np.arange(s, min(s + window, tokens.size)), tokens[perm],
                                            np.zeros(tokens.size), max_tokens, 1))
                   for s in range(0, tokens.size, window))
        assert packed_micro_batches(tokens, max_tokens, window, seed=11) == want, (max_tokens, window)
    assert packed_micro_batches(np.zeros(0), 520, 16, seed=0) == 0
    with pytest.raises(ValueError, match="above max_tokens"):
        packed_micro_batches(np.array([600]), 520, 16, seed=0)


def test_packed_estimate_matches_the_collate_stage_on_real_rows(table):
    """Estimate vs the micro-batches the collate stage makes from the same rows (text budget not binding): they
    pack different random orders, which moves each buffer's greedy count by about one micro-batch."""
    cfg = _cfg(table, max_protein_length=1024, max_tokens=3000, max_text_tokens=10**6)
    tokens = protein_tokens(table.column("length").to_numpy(), cfg.max_protein_length)
    buffers = -(-table.num_rows // cfg.window_rows)
    bucketed_formula = table.num_rows // cfg.micro_batch_size  # what the row-count estimate would say
    for epoch in range(3):
        got = len(_collate(table, cfg, epoch=epoch)["batch_key"])
        est = packed_micro_batches(tokens, cfg.max_tokens, cfg.window_rows, derive_seed(cfg.seed, epoch, "estimate"))
        assert abs(est - got) <= buffers, (epoch, est, got)
        assert abs(bucketed_formula - got) > buffers  # the tolerance tells a token estimate from a row count
