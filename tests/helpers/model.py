"""Real ProtAnno rows and tiny models for the model tests (no Ray, no downloads)."""

from __future__ import annotations

import functools
import json
import warnings

import torch

from protclip.data.masking import IGNORE_INDEX


@functools.lru_cache(maxsize=1)
def protanno_rows() -> tuple[dict, ...]:
    """The 103 real UniProt sample entries as ProtAnno rows, through the project's own parser.

    The parser is developed alongside; if it cannot run, the 10 real ProtCLIP sample pairs are used instead
    (with a warning), cut into properties at the headers as the released data is.
    """
    try:
        from protclip.data.schema import record_to_row
        from protclip.data.uniprot import parse_file
        from protclip.paths import uniprot_samples_dat

        report = parse_file(uniprot_samples_dat())
        assert not report.errors, report.errors[:3]
        return tuple(record_to_row(r) for r in report.records)
    except Exception as e:  # noqa: BLE001 - any parser failure: fall back, loudly
        warnings.warn(
            f"UniProt parser unavailable ({type(e).__name__}: {e}); using the jsonl sample rows", stacklevel=2
        )
        return jsonl_rows()


@functools.lru_cache(maxsize=1)
def jsonl_rows() -> tuple[dict, ...]:
    """The real ProtCLIP aligned-data sample pairs as rows (property offsets found at the headers)."""
    from protclip.data.collate import HEADERS, PROPERTIES
    from protclip.paths import shared_data_dir

    rows = []
    path = shared_data_dir() / "uniprot_samples" / "protclip_aligned_data_sample.jsonl"
    for i, line in enumerate(path.read_text().splitlines()):
        rec = json.loads(line)
        text = rec["text"]
        starts = sorted((text.find(HEADERS[p]), p) for p in PROPERTIES if text.find(HEADERS[p]) >= 0)
        offsets = [
            {"property": p, "start": s, "end": (starts[k + 1][0] - 1 if k + 1 < len(starts) else len(text))}
            for k, (s, p) in enumerate(starts)
        ]
        rows.append({"accession": f"SAMPLE{i}", "sequence": rec["seq"], "length": len(rec["seq"]), "text": text,
                     "property_offsets": offsets, "features": []})  # fmt: skip
    return tuple(rows)


def row_batch(n: int = 6, start: int = 0) -> list[dict]:
    """``n`` real rows, chosen to mix lengths (some longer than the tiny max length) and property counts."""
    rows = sorted(protanno_rows(), key=lambda r: r["accession"])
    return [dict(r) for r in rows[start : start + n]]


def tiny(mode: str = "paper", seed: int = 0, loss_cfg=None, **overrides):
    """(model, loss_fn, collator) on a tiny random-init config."""
    from protclip.data.collate import ProtCLIPCollator
    from protclip.data.config import tiny_data_config
    from protclip.model.config import LossConfig, collate_config, tiny_model_config
    from protclip.model.losses import ProtCLIPLoss
    from protclip.model.protclip import build_model

    mcfg = tiny_model_config(mode=mode, **overrides)
    lcfg = loss_cfg or LossConfig()
    torch.manual_seed(seed)
    model = build_model(mcfg, lcfg)
    return model, ProtCLIPLoss(lcfg, mcfg), ProtCLIPCollator(collate_config(mcfg, lcfg, data_cfg=tiny_data_config()), seed=seed)


def short_rows(n: int = 4) -> list[dict]:
    """``n`` real rows with the shortest sequences: shorter than the tiny max length, so a collated batch has
    protein padding, and texts of different lengths, so it has text and sub-text padding too."""
    rows = sorted(protanno_rows(), key=lambda r: (len(r["sequence"]), r["accession"]))
    return [dict(r) for r in rows[:n]]


def pad_columns(
    batch: dict[str, torch.Tensor], protein: int = 0, text: int = 0, subtext: int = 0, text_pad_id: int = 0
) -> dict[str, torch.Tensor]:
    """The same batch with extra padding columns appended by hand (same masks and spans as the original):
    pad id / 0 attention mask / IGNORE_INDEX labels."""
    from protclip.data.tokenizers import ESM_PAD

    fill = {
        "protein_input_ids": (ESM_PAD, protein), "mlm_input_ids": (ESM_PAD, protein),
        "span_input_ids": (ESM_PAD, protein), "protein_attention_mask": (0, protein),
        "mlm_labels": (IGNORE_INDEX, protein), "span_labels": (IGNORE_INDEX, protein),
        "text_input_ids": (text_pad_id, text), "text_attention_mask": (0, text),
        "subtext_input_ids": (text_pad_id, subtext), "subtext_attention_mask": (0, subtext),
    }  # fmt: skip
    out = dict(batch)
    for key, (value, n) in fill.items():
        v = batch[key]
        out[key] = torch.cat([v, torch.full((*v.shape[:-1], n), value, dtype=v.dtype)], dim=-1)
    return out


# ---------------------------------------------------------------------------------------------------------
# Reference implementation of the objectives, written from ProtCLIP's formulas (float64). It reads the
# model's parameters and runs its towers (which are not under test), but re-derives everything after them:
# pooling, projections, the BSR decoder, the prototype assignment, PDA and the four losses. The method's
# constants are written here, not read from the model: GC temperature 0.07, PDA temperature 0.1, theta 0.3,
# prototype softmax temperature 0.9, lambda_bsr 0.7, lambda_mlm 0.3, lambda_pda 1.
# ---------------------------------------------------------------------------------------------------------
GC_TEMPERATURE = 0.07
PDA_TEMPERATURE = 0.1
PDA_THETA = 0.3
PROTO_TAU = 0.9
LAMBDAS = {"loss_gc": 1.0, "loss_bsr": 0.7, "loss_mlm": 0.3, "loss_pda": 1.0}


def _lin(x: torch.Tensor, layer) -> torch.Tensor:
    return x @ layer.weight.detach().double().t() + layer.bias.detach().double()


def ref_projection(x: torch.Tensor, head) -> torch.Tensor:
    """Linear -> ReLU -> Linear (the protein / text projection heads)."""
    return _lin(torch.relu(_lin(x, head[0])), head[2])


def ref_token_head(x: torch.Tensor, head) -> torch.Tensor:
    """Linear -> GELU -> LayerNorm -> Linear (MLM head, BSR head)."""
    import torch.nn.functional as F

    y = F.gelu(_lin(x, head[0]))
    ln = head[2]
    y = F.layer_norm(y, ln.normalized_shape, ln.weight.detach().double(), ln.bias.detach().double(), ln.eps)
    return _lin(y, head[3])


def ref_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over the positions where ``mask`` is set (all positions: pass a mask of ones)."""
    m = mask.double().unsqueeze(-1)
    return (hidden * m).sum(1) / m.sum(1)


def ref_residue_mask(ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
    """Real residues: attended, and not <cls>/<eos>."""
    from protclip.data.tokenizers import ESM_CLS, ESM_EOS

    return am.bool() & (ids != ESM_CLS) & (ids != ESM_EOS)


def ref_clip_loss(p: torch.Tensor, t: torch.Tensor, scale: float) -> torch.Tensor:
    """½[CE(s P Tᵀ, diag) + CE(s T Pᵀ, diag)] (the GC loss)."""
    import torch.nn.functional as F

    logits = scale * p.double() @ t.double().t()
    labels = torch.arange(len(p))
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def ref_pda(tokens, mask, queries, scale: float = 1.0 / PDA_TEMPERATURE, theta: float = PDA_THETA) -> dict:
    """PDA in float64, from the token scores on: weights, segments, logits, both CE directions, and the
    distance of the closest pooled score to theta (a cut decided by a rounding error would make a float32
    comparison meaningless; callers assert it is not tiny)."""
    import torch.nn.functional as F

    e, m, q = tokens.double(), mask.bool()[:, None, :], queries.double()
    s = torch.einsum("bkd,bld->bkl", q, e)
    s_min = torch.where(m, s, torch.inf).amin(-1, keepdim=True)
    s_max = torch.where(m, s, -torch.inf).amax(-1, keepdim=True)
    s_hat = (s - s_min) / (s_max - s_min)
    keep = m & (s_hat >= theta)
    w = torch.where(keep, s_hat, 0.0)
    w = w / w.sum(-1, keepdim=True)
    seg = torch.einsum("bkl,bld->bkd", w, e)
    logits = scale * torch.einsum("bkd,bjd->bkj", F.normalize(seg, dim=-1), F.normalize(q, dim=-1))
    b, k, _ = logits.shape
    labels = torch.arange(k).repeat(b)
    e2q = F.cross_entropy(logits.reshape(b * k, k), labels)
    q2e = F.cross_entropy(logits.transpose(1, 2).reshape(b * k, k), labels)
    margin = float((s_hat - theta).abs()[m.expand_as(s_hat)].min())
    return {"weights": w, "segments": seg, "logits": logits, "e2q": e2q, "q2e": q2e, "theta_margin": margin}


def ref_forward(model, batch: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """The model's feature dict recomputed from the method's formulas (float64 after the towers), for ``mode``.

    paper: masked means (residues only for proteins; attended tokens for texts and sub-texts), decoder softmax
    over the real text tokens, PDA over real residues. released: plain means over every position, decoder
    softmax over the protein axis without a text mask, PDA over every position. Eval mode only (the prototype
    assignment is the noise-free softmax).
    """
    assert mode in ("paper", "released") and not model.training
    paper = mode == "paper"
    ids, am = batch["protein_input_ids"], batch["protein_attention_mask"]
    tid, tam = batch["text_input_ids"], batch["text_attention_mask"]
    with torch.no_grad():
        h = model.protein_tower(input_ids=ids, attention_mask=am).last_hidden_state.double()
        g = model.text_tower(input_ids=tid, attention_mask=tam).last_hidden_state.double()
        h_mlm = model.protein_tower(input_ids=batch["mlm_input_ids"], attention_mask=am).last_hidden_state
        h_span = model.protein_tower(input_ids=batch["span_input_ids"], attention_mask=am).last_hidden_state
        b, k, ls = batch["subtext_input_ids"].shape
        sam = batch["subtext_attention_mask"].reshape(b * k, ls)
        g_sub = model.text_tower(
            input_ids=batch["subtext_input_ids"].reshape(b * k, ls), attention_mask=sam
        ).last_hidden_state.double()
    out = {}
    p_mask = ref_residue_mask(ids, am) if paper else torch.ones_like(am)
    out["protein_features"] = _normalize(ref_projection(ref_mean(h, p_mask), model.protein_proj))
    t_mask = tam if paper else torch.ones_like(tam)
    out["text_features"] = _normalize(ref_projection(ref_mean(g, t_mask), model.text_proj))
    # MLM
    sel = batch["mlm_labels"] != IGNORE_INDEX
    out["mlm_logits"] = ref_token_head(h_mlm.double()[sel], model.mlm_head)
    out["mlm_labels"] = batch["mlm_labels"][sel]
    # BSR: Q from the span-masked protein tokens, K/V from the projected text tokens
    dec, d = model.decoder, model.cfg.projection_dim
    prot_tok = ref_projection(h_span.double(), model.protein_proj)
    text_tok = ref_projection(g, model.text_proj)
    qd, kd, vd = _lin(prot_tok, dec.query), _lin(text_tok, dec.key), _lin(text_tok, dec.value)
    scores = torch.einsum("bpd,btd->bpt", qd, kd) / d**0.5
    if paper:
        probs = scores.masked_fill(~tam.bool()[:, None, :], -torch.inf).softmax(dim=2)  # over real text
    else:
        probs = scores.softmax(dim=1)  # over the protein axis, text padding included
    fused = torch.einsum("bpt,btd->bpd", probs, vd)
    sel = batch["span_labels"] != IGNORE_INDEX
    out["bsr_logits"] = ref_token_head(fused[sel], model.bsr_head)
    out["bsr_labels"] = batch["span_labels"][sel]
    # PDA inputs
    out["pda_tokens"] = ref_projection(h, model.protein_proj)
    out["pda_token_mask"] = p_mask.bool()
    s_mask = sam if paper else torch.ones_like(sam)
    u = ref_projection(ref_mean(g_sub, s_mask), model.text_proj).reshape(b, k, -1)
    c = model.prototypes.prototypes.weight.detach().double()
    out["pda_queries"] = ((u @ c.t()) / PROTO_TAU).softmax(-1) @ c
    return out


def ref_terms(ref: dict[str, torch.Tensor], mode: str) -> dict[str, torch.Tensor]:
    """The four loss terms and the weighted total (0.7 BSR, 0.3 MLM, 1.0 PDA) from a :func:`ref_forward` dict."""
    import torch.nn.functional as F

    terms = {
        "loss_gc": ref_clip_loss(ref["protein_features"], ref["text_features"], 1.0 / GC_TEMPERATURE),
        "loss_mlm": F.cross_entropy(ref["mlm_logits"], ref["mlm_labels"]),
        "loss_bsr": F.cross_entropy(ref["bsr_logits"], ref["bsr_labels"]),
    }
    pda = ref_pda(ref["pda_tokens"], ref["pda_token_mask"], ref["pda_queries"])
    # paper: symmetric ½[CE(e->q) + CE(q->e)]; released: the e->q direction twice
    terms["loss_pda"] = (pda["e2q"] + pda["q2e"]) / 2 if mode == "paper" else pda["e2q"]
    terms["loss"] = sum(LAMBDAS[name] * terms[name] for name in LAMBDAS)
    terms["pda_theta_margin"] = pda["theta_margin"]
    return terms


def _normalize(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)
