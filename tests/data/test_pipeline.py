"""The Ray Data pre-training pipeline on the real UniProt samples, from a local folder and from moto S3.

The ProtAnno files are built with the project's parser from ``uniprot_samples.dat`` (103 real entries) and
written as 3 files with 8-row row groups, so the read, the row-group shuffle and the read parallelism are
exercised. The sampler keeps Swiss-Prot rows in the sampler too (``keep_reviewed=False``) with gentle exponents,
so that sampling, per-epoch redraws and the mix have something to show on 103 rows.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from protclip.data.config import DataConfig
from protclip.data.parquet_files import ProtAnnoFileError
from protclip.data.pipeline import (
    build_pretrain_datasets,
    iter_micro_batches,
    mix_metrics,
    ray_data_config,
    sampled_rows,
)
from protclip.data.sampling import SamplingConfig, keep_mask
from protclip.data.schema import record_to_row, rows_to_table
from protclip.data.stages import val_uniform
from protclip.data.uniprot import parse_file
from protclip.model.config import collate_config, tiny_model_config
from protclip.storage import StorageConfig, filesystem
from tests.helpers.pipeline_checks import padding_share, sample_mix

pytestmark = pytest.mark.ray

PER_EPOCH = SamplingConfig(mode="per_epoch", keep_reviewed=False, coverage_exponent=1.0, confidence_exponent=1.0,
                           min_k=1, max_pe=5)
META = ["accession", "reviewed", "protein_existence", "n_properties", "length"]


@pytest.fixture(scope="module")
def table(uniprot_dat) -> pa.Table:
    rep = parse_file(uniprot_dat)
    assert not rep.errors and len(rep.records) == 103
    return rows_to_table([record_to_row(r) for r in rep.records])


def _write(table: pa.Table, fs, base: str) -> None:
    for i, start in enumerate((0, 35, 70)):
        with fs.open(f"{base}/part-{i}.parquet", "wb") as f:
            pq.write_table(table.slice(start, 35), f, row_group_size=8)


@pytest.fixture(scope="module")
def local_uri(table, tmp_path_factory) -> str:
    d = tmp_path_factory.mktemp("protanno")
    fs, base = filesystem(str(d))
    _write(table, fs, base)
    return str(d)


def _cfg(uri: str, **kw) -> DataConfig:
    base = dict(uri=uri, sampling=PER_EPOCH, micro_batch_size=4, bucket_window=16, shuffle_buffer=32,
                max_protein_length=1024, max_text_length=128, max_subtext_length=64, val_fraction=0.1,
                val_max_rows=None, num_epochs=2)
    base.update(kw)
    return DataConfig(**base)


def _pure_train(table: pa.Table, cfg: DataConfig, epoch: int) -> set[str]:
    keep = keep_mask(table["reviewed"].to_numpy(zero_copy_only=False), table["protein_existence"].to_numpy(),
                     table["n_properties"].to_numpy(), table["accession"], cfg.sampling, epoch)
    held = val_uniform(table["accession"], cfg.val_seed) < cfg.val_fraction
    return set(table.filter(pa.array(keep & ~held))["accession"].to_pylist())


def _rows_by_epoch(ds) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for r in ds.iter_rows():
        out.setdefault(int(r["epoch"]), []).append(r["accession"])
    return out


def test_sampling_matches_pure_keep_mask_and_columns(ray_local, table, local_uri):
    cfg = _cfg(local_uri)
    ds = sampled_rows(cfg)
    assert ds.schema().names == [*META, "epoch"]  # only the requested columns travel
    got = _rows_by_epoch(ds)
    for e in (0, 1):
        assert set(got[e]) == _pure_train(table, cfg, e) and len(got[e]) == len(set(got[e]))
    assert set(got[0]) != set(got[1])  # per_epoch: a fresh draw
    # independent of how the row groups are grouped into read tasks
    grouped = _rows_by_epoch(sampled_rows(_cfg(local_uri, read_parallelism=2)))
    assert {e: set(v) for e, v in grouped.items()} == {e: set(v) for e, v in got.items()}
    once = _rows_by_epoch(sampled_rows(_cfg(local_uri, sampling=SamplingConfig(mode="once", keep_reviewed=False,
                                                                               min_k=1, max_pe=5))))
    assert set(once[0]) == set(once[1]) and once[0]
    # the Ray mix (groupby on the metadata columns) agrees with the pure one and adds up
    mix = sample_mix(ray_local.data.from_arrow(table), PER_EPOCH, epoch=1)
    assert mix == sample_mix(table, PER_EPOCH, epoch=1)
    kept = keep_mask(table["reviewed"].to_numpy(zero_copy_only=False), table["protein_existence"].to_numpy(),
                     table["n_properties"].to_numpy(), table["accession"], PER_EPOCH, 1)
    assert sum(mix.values()) == int(kept.sum())


def test_validation_split_disjoint_stable_and_capped(ray_local, table, local_uri):
    cfg = _cfg(local_uri, val_fraction=0.3)
    val = set(_rows_by_epoch(sampled_rows(cfg, split="val", epochs=[0]))[0])
    assert val and not val & (_pure_train(table, cfg, 0) | _pure_train(table, cfg, 1))
    u = val_uniform(table["accession"], 0)
    keep0 = keep_mask(table["reviewed"].to_numpy(zero_copy_only=False), table["protein_existence"].to_numpy(),
                      table["n_properties"].to_numpy(), table["accession"], PER_EPOCH, 0)
    cand = table.filter(pa.array((u < 0.3) & keep0))
    assert val == set(cand["accession"].to_pylist())  # a hash of the accession, not row order
    # another shuffle seed leaves the held-out set alone; the cap keeps the smallest hashes
    capped_cfg = _cfg(local_uri, val_fraction=0.3, val_max_rows=3, seed=5)
    data = build_pretrain_datasets(capped_cfg, collate_config(tiny_model_config(), data_cfg=capped_cfg), world_size=1)
    capped = set(_rows_by_epoch(sampled_rows(cfg, split="val", epochs=[0],
                                             val_threshold=data.manifest["val_threshold"]))[0])
    cu = val_uniform(cand["accession"], 0)
    assert data.val_rows == 3 and capped == set(np.asarray(cand["accession"].to_pylist())[np.argsort(cu)[:3]])
    assert sum(data.val_mix.values()) == 3


@pytest.fixture(scope="module")
def det(ray_local, local_uri):
    """A deterministic-split build for 2 workers, and its train stream materialised once."""
    cfg = _cfg(local_uri, split="deterministic")
    data = build_pretrain_datasets(cfg, collate_config(tiny_model_config(), data_cfg=cfg), world_size=2)
    return cfg, data, data.train.materialize()


def _keys(it) -> list[tuple[int, int]]:
    return [(int(m["epoch"]), int(m["batch_key"])) for m in it]


def test_micro_batches_mix_and_bucketing(ray_local, table, local_uri, det):
    cfg, data, mat = det
    for e in (0, 1):
        assert sum(data.mix[e].values()) == len(_pure_train(table, cfg, e)) == data.manifest["train_rows_per_epoch"][e]
    flat = mix_metrics(data.mix)
    assert flat["mix/epoch1/total"] == sum(data.mix[1].values())
    assert all(k.split("/")[2][:3] in ("sp_", "tr_", "tot") for k in flat)
    assert set(data.manifest["columns_read"]) == {"accession", "sequence", "length", "text", "property_offsets"}
    mbs = list(iter_micro_batches(mat, rank=0, world_size=1))
    per_epoch = {e: sum(1 for m in mbs if int(m["epoch"]) == e) for e in (0, 1)}
    for e in (0, 1):
        assert 0 < per_epoch[e] <= data.manifest["micro_batches_per_epoch_max"][e]
        assert abs(per_epoch[e] - data.micro_batches_per_epoch[e]) <= 2
        assert data.steps_per_epoch <= data.micro_batches_per_epoch[e] // 2
    assert [int(m["epoch"]) for m in mbs] == sorted(int(m["epoch"]) for m in mbs)  # epoch-major
    for m in mbs:
        b, lp = m["protein_input_ids"].shape
        assert b == 4 and lp <= 1024 and m["mlm_labels"].shape == (b, lp) and m["span_input_ids"].shape == (b, lp)
        assert m["text_input_ids"].shape[0] == 4 and m["text_input_ids"].shape[1] <= 128
        assert m["subtext_input_ids"].shape[:2] == (4, 4) and m["property_present"].shape == (4, 4)
        assert int(m["n_real_tokens"]) == int(m["protein_attention_mask"].sum())
        assert int(m["n_real_tokens"]) + int(m["n_padded_tokens"]) == b * lp
    assert len({m["protein_input_ids"].shape[1] for m in mbs}) > 1  # variable shapes between rows
    share = padding_share(sum(int(m["n_real_tokens"]) for m in mbs), sum(int(m["n_padded_tokens"]) for m in mbs))
    flat_cfg = _cfg(local_uri, split="deterministic", bucket_window=0)
    flat_data = build_pretrain_datasets(flat_cfg, collate_config(tiny_model_config(), data_cfg=flat_cfg), world_size=1)
    fl = list(iter_micro_batches(flat_data.train))
    share_flat = padding_share(sum(int(m["n_real_tokens"]) for m in fl), sum(int(m["n_padded_tokens"]) for m in fl))
    assert share < share_flat
    assert data.val is not None and data.val_rows >= 8


def test_deterministic_split_reproducible_and_resumable(ray_local, det):
    cfg, data, mat = det
    assert data.steps_per_epoch >= 1
    dc = ray_data_config(cfg)
    assert dc._datasets_to_split == [] and dc._get_user_execution_options("train").preserve_order
    assert ray_data_config(DataConfig())._datasets_to_split == "all"
    one = _keys(iter_micro_batches(mat, rank=0, world_size=1))
    r1 = _keys(iter_micro_batches(data.train, rank=1, world_size=2))  # a second, independent execution
    r0 = _keys(iter_micro_batches(mat, rank=0, world_size=2))
    assert len(r0) == len(r1) and r0
    expected = []
    for e in (0, 1):
        ep = [k for k in one if k[0] == e]
        expected += ep[: len(ep) // 2 * 2]
    assert r0 == expected[0::2] and r1 == expected[1::2]  # same order on both executions
    full = list(iter_micro_batches(mat, rank=0, world_size=1))
    resumed = list(iter_micro_batches(mat, rank=0, world_size=1, skip=3))
    assert _keys(resumed) == one[3:]
    for a, b in zip(resumed, full[3:], strict=True):
        assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)


def test_s3_source_matches_local(ray_local, table, s3_server, s3_bucket):
    storage = StorageConfig(endpoint_url=s3_server, access_key_id="testing", secret_access_key="testing-secret-value",
                            region="us-east-1")
    uri = f"s3://{s3_bucket}/protanno"
    fs, base = filesystem(uri, storage)
    _write(table, fs, base)
    cfg = _cfg(uri, read_parallelism=3)
    data = build_pretrain_datasets(cfg, collate_config(tiny_model_config(), data_cfg=cfg), storage, world_size=1)
    for e in (0, 1):  # the metadata pass read every row group from S3
        assert sum(data.mix[e].values()) == len(_pure_train(table, cfg, e))
    assert data.manifest["files"][0]["path"] == f"s3://{s3_bucket}/protanno/part-0.parquet"
    assert "testing-secret-value" not in repr(data.manifest)
    mb = next(iter_micro_batches(data.train))  # sequences and texts read from S3 and collated
    assert mb["protein_input_ids"].shape[0] == 4 and int(mb["n_real_tokens"]) > 0


def test_bad_parquet_gives_one_clear_error(table, tmp_path):
    fs, base = filesystem(str(tmp_path))
    _write(table, fs, base)
    (tmp_path / "part-9.parquet").write_bytes(b"PAR1 garbage")
    with pytest.raises(ProtAnnoFileError, match=r"1 of 4 .*part-9\.parquet: not a readable Parquet file"):
        build_pretrain_datasets(_cfg(str(tmp_path)), collate_config(tiny_model_config(), data_cfg=_cfg(str(tmp_path))),
                                world_size=1)
    (tmp_path / "part-9.parquet").unlink()
    pq.write_table(table.drop_columns(["text"]), tmp_path / "part-8.parquet")
    with pytest.raises(ProtAnnoFileError, match=r"part-8\.parquet: not a ProtAnno v1 table: missing columns \['text'\]"):
        build_pretrain_datasets(_cfg(str(tmp_path)), collate_config(tiny_model_config(), data_cfg=_cfg(str(tmp_path))),
                                world_size=1)
