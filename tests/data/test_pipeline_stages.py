"""The per-block pipeline stages and the worker-side iterator, without Ray (fast unit tests).

Rows are the real UniProt samples parsed by protclip.data.uniprot; nothing is invented.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protclip.data.config import DataConfig
from protclip.data.parquet_files import Fragment, ProtAnnoFileError, inspect_parquet, read_fragment
from protclip.data.pipeline import HOST_FIELDS, iter_micro_batches, make_collator, required_columns
from protclip.data.sampling import SamplingConfig, keep_mask
from protclip.data.schema import record_to_row, rows_to_table
from protclip.data.stages import (
    DETERMINISTIC_FLAG,
    SplitRule,
    bucket,
    collate_windows,
    count_mix,
    mix_key,
    protein_tokens,
    read_and_sample,
    val_uniform,
)
from protclip.data.uniprot import parse_file
from protclip.model.config import collate_config, tiny_model_config
from tests.helpers.pipeline_checks import EpochDataStats, padding_share
from tests.helpers.tolerance import approx_rounding

SAMPLING = SamplingConfig(mode="per_epoch", keep_reviewed=False, coverage_exponent=1.0, confidence_exponent=1.0,
                          min_k=1, max_pe=5)


@pytest.fixture(scope="module")
def table(uniprot_dat) -> pa.Table:
    rep = parse_file(uniprot_dat)
    assert not rep.errors
    return rows_to_table([record_to_row(r) for r in rep.records])


def _data_cfg(**kw) -> DataConfig:
    base = dict(uri="unused", sampling=SAMPLING, micro_batch_size=4, bucket_window=16, shuffle_buffer=32,
                max_protein_length=130, max_text_length=128, max_subtext_length=64)
    base.update(kw)
    return DataConfig(**base)


def _collate(batch: pa.Table, cfg: DataConfig, epoch_col: int | list[int] = 0, deterministic: bool = False):
    coll = make_collator(cfg, collate_config(tiny_model_config(), data_cfg=cfg))
    cols = required_columns(coll)
    t = batch.select(cols)
    ep = np.full(t.num_rows, epoch_col) if isinstance(epoch_col, int) else np.asarray(epoch_col)
    t = t.append_column("epoch", pa.array(ep.astype(np.int64)))
    return collate_windows(t, collator=coll, micro_batch_size=cfg.micro_batch_size, bucket_window=cfg.bucket_window,
                           max_protein_length=cfg.max_protein_length, seed=cfg.seed, deterministic=deterministic)


def test_bucket_sorts_inside_windows_only():
    lengths = np.array([9, 1, 8, 2, 7, 3, 6, 4, 5, 0, 10, 11])
    order = np.arange(12)
    groups = bucket(order, lengths, 2, 6)
    assert all(len(g) == 2 for g in groups)
    assert sorted(np.concatenate(groups).tolist()) == list(range(12))
    first = np.concatenate(groups[:3])  # window 1 = rows 0..5, sorted by length
    assert lengths[first].tolist() == sorted(lengths[:6].tolist())
    off = bucket(order, lengths, 2, 0)  # bucketing off: order kept
    assert np.concatenate(off).tolist() == list(range(12))
    with pytest.raises(ValueError, match="multiple"):
        bucket(np.arange(5), lengths, 2, 6)


def test_collate_windows_shapes_determinism_and_padding(table):
    cfg = _data_cfg()
    batch = table.slice(0, 64)
    out = _collate(batch, cfg)
    n = len(out["epoch"])
    assert n == 64 // 4
    for i in range(n):
        ids, mask = out["protein_input_ids"][i], out["protein_attention_mask"][i]
        assert ids.shape[0] == 4 and ids.shape[1] <= 130 and ids.dtype == np.int32
        assert out["subtext_input_ids"][i].shape[:2] == (4, 4) and out["subtext_input_ids"][i].shape[2] <= 64
        assert out["text_input_ids"][i].shape[0] == 4 and out["text_input_ids"][i].shape[1] <= 128
        assert out["n_real_tokens"][i] == mask.sum()
        assert out["n_real_tokens"][i] + out["n_padded_tokens"][i] == mask.size
    assert set(out[DETERMINISTIC_FLAG].tolist()) == {0}
    again = _collate(batch, cfg)  # same content -> same micro-batches and masks
    assert out["batch_key"].tolist() == again["batch_key"].tolist()
    for a, b in zip(out["mlm_input_ids"], again["mlm_input_ids"], strict=True):
        np.testing.assert_array_equal(a, b)
    other_seed = _collate(batch, _data_cfg(seed=1))
    assert out["batch_key"].tolist() != other_seed["batch_key"].tolist()
    # bucketing lowers the padding share of the same rows
    flat = _collate(batch, _data_cfg(bucket_window=0))
    share = padding_share(out["n_real_tokens"].sum(), out["n_padded_tokens"].sum())
    share_flat = padding_share(flat["n_real_tokens"].sum(), flat["n_padded_tokens"].sum())
    assert share < share_flat


def test_collate_windows_drops_random_rows_and_splits_epochs(table):
    cfg = _data_cfg()
    batch = table.slice(0, 30)  # 30 rows: 7 micro-batches of 4, two rows dropped
    out = _collate(batch, cfg)
    assert len(out["epoch"]) == 7
    mixed = _collate(batch, cfg, epoch_col=[0] * 13 + [1] * 17)  # a buffer straddling an epoch boundary
    assert sorted(mixed["epoch"].tolist()) == [0, 0, 0, 1, 1, 1, 1]
    assert _collate(batch.slice(0, 3), cfg) == {}


def test_split_rule_matches_pure_keep_mask(table):
    held = val_uniform(table["accession"], 0) < 0.2
    for epoch in (0, 1):
        keep = keep_mask(table["reviewed"].to_numpy(zero_copy_only=False), table["protein_existence"].to_numpy(),
                         table["n_properties"].to_numpy(), table["accession"], SAMPLING, epoch)
        train = SplitRule("train", 0.2).mask(table, SAMPLING, epoch)
        np.testing.assert_array_equal(train, keep & ~held)
    val = SplitRule("val", 0.2).mask(table, SAMPLING, 5)  # validation always uses sampling epoch 0
    keep0 = keep_mask(table["reviewed"].to_numpy(zero_copy_only=False), table["protein_existence"].to_numpy(),
                      table["n_properties"].to_numpy(), table["accession"], SAMPLING, 0)
    np.testing.assert_array_equal(val, keep0 & held)
    assert not (val & SplitRule("train", 0.2).mask(table, SAMPLING, 0)).any()


def test_read_and_sample_reads_only_needed_columns(table, tmp_path):
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=40)
    inv = inspect_parquet(str(tmp_path))
    assert [f.num_rows for f in inv.fragments] == [40, 40, 23]
    assert inspect_parquet(str(tmp_path / "a")).files == inv.files  # a key prefix works like a folder
    t = read_fragment(inv.fs, inv.fragments[1], ["accession", "length"])
    assert t.column_names == ["accession", "length"] and t.num_rows == 40
    items = pa.table({"epoch": [3, 3], "path": [inv.fragments[0].path] * 2, "row_group": [0, 2],
                      "num_rows": [40, 23]})
    out = read_and_sample(items, fs=inv.fs, uri=str(tmp_path), read_columns=["accession", "reviewed",
                          "protein_existence", "n_properties", "length"], out_columns=["accession", "length"],
                          sampling=SAMPLING, rule=SplitRule("train", 0.0))
    assert out.column_names == ["accession", "length", "epoch"]
    assert set(out["epoch"].to_pylist()) == {3}
    src = pa.concat_tables([table.slice(0, 40), table.slice(80, 23)])
    m = keep_mask(src["reviewed"].to_numpy(zero_copy_only=False), src["protein_existence"].to_numpy(),
                  src["n_properties"].to_numpy(), src["accession"], SAMPLING, 3)
    assert out["accession"].to_pylist() == src.filter(pa.array(m))["accession"].to_pylist()
    with pytest.raises(ProtAnnoFileError, match="footer said"):
        read_fragment(inv.fs, Fragment(inv.fragments[0].path, 0, 41), ["accession"], str(tmp_path))


def test_footer_stats_skip_row_groups_nothing_can_be_kept_from(table, tmp_path):
    rev = table["reviewed"].to_numpy(zero_copy_only=False)
    k = table["n_properties"].to_numpy()
    hopeless = table.filter(pa.array(~rev & (k < 3)))  # TrEMBL with fewer than 3 properties: p = 0 (paper rule)
    swissprot = table.filter(pa.array(rev))
    pq.write_table(pa.concat_tables([hopeless, swissprot]), tmp_path / "a.parquet", row_group_size=hopeless.num_rows)
    inv = inspect_parquet(str(tmp_path))
    first, second = inv.fragments[0], inv.fragments[1]
    assert first.bounds == (False, 1, 2) and second.bounds[0] is True
    assert not first.may_keep(SamplingConfig()) and second.may_keep(SamplingConfig())
    assert first.may_keep(SamplingConfig(mode="none")) and first.may_keep(SamplingConfig(min_k=1))
    rows = read_fragment(inv.fs, first, ["reviewed", "protein_existence", "n_properties", "accession"])
    assert not keep_mask(rows["reviewed"].to_numpy(zero_copy_only=False), rows["protein_existence"].to_numpy(),
                         rows["n_properties"].to_numpy(), rows["accession"], SamplingConfig(), 0).any()


def test_bad_files_named(table, tmp_path):
    pq.write_table(table, tmp_path / "good.parquet")
    (tmp_path / "corrupt.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(ProtAnnoFileError, match=r"corrupt\.parquet.*not a readable Parquet file"):
        inspect_parquet(str(tmp_path))
    (tmp_path / "corrupt.parquet").unlink()
    bad = table.set_column(table.schema.get_field_index("protein_existence"), "protein_existence",
                           table["protein_existence"].cast(pa.string()))
    pq.write_table(bad, tmp_path / "mismatch.parquet")
    with pytest.raises(ProtAnnoFileError, match=r"mismatch\.parquet.*protein_existence"):
        inspect_parquet(str(tmp_path))
    with pytest.raises(ProtAnnoFileError, match="no .parquet files"):
        inspect_parquet(str(tmp_path / "empty"))


def test_mix_helpers(table):
    mix = count_mix(table)
    assert sum(mix.values()) == table.num_rows
    assert mix_key(True, 1, 4) == "sp_pe1_k4" and mix_key(False, 3, 3) == "tr_pe3_k3"
    assert protein_tokens(np.array([5, 2000]), 130).tolist() == [7, 130]


class _FakeShard:
    """Stands in for a Ray DataIterator: yields 1-row numpy batches like iter_batches(batch_size=1)."""

    def __init__(self, epochs: list[int], deterministic: bool):
        self.rows = [
            {"protein_input_ids": np.full((1, 2, 3), i, dtype=np.int32), "epoch": np.array([e]),
             "batch_key": np.array([i]), "n_real_tokens": np.array([5]), "n_padded_tokens": np.array([1]),
             DETERMINISTIC_FLAG: np.array([int(deterministic)], dtype=np.int8)}
            for i, e in enumerate(epochs)
        ]

    def iter_batches(self, **kw):
        assert kw["batch_size"] == 1
        yield from self.rows


def _keys(it) -> list[int]:
    return [int(mb["batch_key"]) for mb in it]


def test_iter_micro_batches_deterministic_partition_and_skip():
    epochs = [0] * 7 + [1] * 5
    shard = _FakeShard(epochs, deterministic=True)
    full = _keys(iter_micro_batches(shard))
    assert full == list(range(12))
    r0 = _keys(iter_micro_batches(shard, rank=0, world_size=2))
    r1 = _keys(iter_micro_batches(shard, rank=1, world_size=2))
    assert len(r0) == len(r1) == 5  # epoch 0: 3 groups (row 6 dropped), epoch 1: 2 groups (row 11 dropped)
    assert r0 == [0, 2, 4, 7, 9] and r1 == [1, 3, 5, 8, 10]
    r = [_keys(iter_micro_batches(shard, rank=k, world_size=3)) for k in range(3)]
    assert len({len(x) for x in r}) == 1 and sorted(sum(r, [])) == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert _keys(iter_micro_batches(shard, skip=4)) == full[4:]
    assert _keys(iter_micro_batches(shard, rank=1, world_size=2, skip=2)) == r1[2:]
    mb = next(iter_micro_batches(shard))
    assert mb["protein_input_ids"].shape == (2, 3) and str(mb["protein_input_ids"].dtype) == "torch.int64"
    assert DETERMINISTIC_FLAG not in mb
    streaming = _FakeShard(epochs, deterministic=False)  # streaming: the split already happened in Ray
    assert _keys(iter_micro_batches(streaming, rank=1, world_size=2)) == full


def test_model_inputs_move_to_the_device_and_bookkeeping_stays_on_the_host():
    """``meta`` stands in for an accelerator: only what the model reads is copied to the device."""
    mb = next(iter_micro_batches(_FakeShard([0, 0], deterministic=False), device="meta"))
    assert mb["protein_input_ids"].device.type == "meta"
    assert {k for k, v in mb.items() if v.device.type == "cpu"} == {"epoch", "batch_key", "n_real_tokens",
                                                                   "n_padded_tokens"}
    assert set(mb) - {"protein_input_ids"} <= HOST_FIELDS


def test_epoch_data_stats():
    stats = EpochDataStats()
    for mb in iter_micro_batches(_FakeShard([0, 0, 1], deterministic=False)):
        stats.update(mb)
    m = stats.metrics(0)
    assert m["data/epoch0/micro_batches"] == 2 and m["data/epoch0/rows"] == 4
    assert m["data/epoch0/padding_share"] == approx_rounding(1 / 6)


def test_data_config_validation():
    with pytest.raises(ValueError, match="micro_batch_size"):
        DataConfig(micro_batch_size=0)
    with pytest.raises(ValueError, match="split"):
        DataConfig(split="random")
    cfg = DataConfig(micro_batch_size=8, shuffle_buffer=100, bucket_window=256)
    assert cfg.window_rows == 256
    assert DataConfig(num_epochs=3, sampling=SamplingConfig(mode="per_epoch")).sampling_epochs == [0, 1, 2]
    assert DataConfig(num_epochs=3).sampling_epochs == [0, 0, 0]
