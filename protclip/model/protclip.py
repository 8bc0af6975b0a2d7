"""The ProtCLIP dual encoder: ESM-2 + BERT towers, heads, and the per-step forward of the four objectives.

``forward(batch)`` returns a dict of *features* (pooled embeddings, selected token logits, PDA inputs, clamped
scales); :class:`protclip.model.losses.ProtCLIPLoss` turns it into named loss terms. Keeping the two apart lets
the trainer gather GC features across ranks or micro-batches (gradient cache) without touching the model.

Per step (only the passes the enabled objectives need run): clean ESM pass (GC + PDA), text pass (GC + BSR),
MLM ESM pass, span-masked ESM pass (BSR), four sub-text BERT passes (PDA, no grad).

Inside :func:`seeded_passes` each of these passes draws its dropout masks / Gumbel noise from its own generator
state, seeded from (seed, pass name): the gradient cache's no-grad ``encode_protein`` / ``encode_text`` then see the
same randomness as the grad forward's clean protein and text passes, whatever ran before them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from protclip.data.collate import PACKED_MARKER
from protclip.data.masking import IGNORE_INDEX
from protclip.data.tokenizers import ESM_CLS, ESM_EOS, ESM_VOCAB
from protclip.model.attention import PackedSeqs
from protclip.model.config import LossConfig, ModelConfig
from protclip.model.heads import FragmentDecoder, ProjectionHead, PrototypeBank, TokenHead
from protclip.model.losses.registry import needed_features, needed_passes
from protclip.model.packed import packed_hidden, segment_mean
from protclip.model.towers import build_protein_tower, build_text_tower
from protclip.seeds import derive_seed

_PASS_SEED: ContextVar[int | None] = ContextVar("protclip_pass_seed", default=None)


@contextlib.contextmanager
def seeded_passes(seed: int) -> Iterator[None]:
    """Within it, every model pass runs on CPU + current-CUDA generators seeded from ``(seed, pass name)`` and
    restored afterwards: a pass's randomness depends on ``seed`` and its name only (not on what ran before it),
    and the global RNG is left as it was. Outside, passes draw from the global RNG as usual."""
    token = _PASS_SEED.set(int(seed))
    try:
        yield
    finally:
        _PASS_SEED.reset(token)


@contextlib.contextmanager
def _pass_rng(name: str) -> Iterator[None]:
    seed = _PASS_SEED.get()
    if seed is None:
        yield
        return
    pass_seed = derive_seed(seed, name)
    cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
    with torch.random.fork_rng(devices=[torch.cuda.current_device()] if cuda else [], device_type="cuda"):
        torch.default_generator.manual_seed(pass_seed)
        if cuda:
            torch.cuda.manual_seed(pass_seed)  # current device only: the others are not forked
        yield


def masked_mean(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over positions where ``mask`` is set; ``[B, L, H]`` -> ``[B, H]``.

    Summed in fp32 (a bf16 running sum over ~1000 tokens loses digits), returned in the input dtype so a
    bf16-parameter projection (FSDP2 mixed precision) accepts it.
    """
    m = mask.to(torch.float32).unsqueeze(-1)
    return ((hidden.float() * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)).to(hidden.dtype)


def residue_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """True on real residues: not padding, not <cls>/<eos>."""
    return attention_mask.bool() & (input_ids != ESM_CLS) & (input_ids != ESM_EOS)


class ProtCLIPModel(nn.Module):
    """Attributes ``protein_tower`` (``EsmModel``) and ``text_tower`` (``BertModel``) export with
    ``save_pretrained``; see :func:`export_towers`."""

    def __init__(
        self,
        cfg: ModelConfig,
        loss_cfg: LossConfig | None = None,
        protein_tower: nn.Module | None = None,
        text_tower: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.loss_cfg = loss_cfg or LossConfig()
        self.released = cfg.mode == "released"
        self.protein_tower = protein_tower if protein_tower is not None else build_protein_tower(cfg)
        self.text_tower = text_tower if text_tower is not None else build_text_tower(cfg)
        hp, ht, d = (
            self.protein_tower.config.hidden_size,
            self.text_tower.config.hidden_size,
            cfg.projection_dim,
        )
        vocab = len(ESM_VOCAB)
        self.protein_proj = ProjectionHead(hp, d)
        self.text_proj = ProjectionHead(ht, d)
        self.mlm_head = TokenHead(hp, d, vocab)
        self.bsr_head = TokenHead(d, d, vocab)
        self.decoder = FragmentDecoder(d, softmax_over_text=not self.released, residual=cfg.decoder_residual)
        self.prototypes = PrototypeBank(cfg.proto_num, d, cfg.gumbel_tau)
        # 1-D (not scalar) so FSDP2 can shard them (it shards along dimension 0, which a scalar lacks)
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / cfg.temperature_init)]))
        self.local_logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / cfg.local_temperature_init)]))
        self._max_log_scale = math.log(cfg.max_logit_scale)
        if cfg.freeze_text:
            self.text_tower.requires_grad_(False)
            self.text_tower.eval()

    # ------------------------------------------------------------------------------------------ plumbing
    def train(self, mode: bool = True) -> ProtCLIPModel:
        super().train(mode)
        if self.cfg.freeze_text:
            self.text_tower.eval()  # a frozen tower keeps dropout off
        return self

    def _text_ctx(self):
        return torch.no_grad() if self.cfg.freeze_text else contextlib.nullcontext()

    def _pool_protein(self, h: torch.Tensor, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        return h.mean(dim=1) if self.released else masked_mean(h, residue_mask(ids, am))

    def _pool_text(self, g: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        return g.mean(dim=1) if self.released else masked_mean(g, am)

    def _protein_hidden(
        self, ids: torch.Tensor, am: torch.Tensor, pass_name: str = "protein"
    ) -> torch.Tensor:
        with _pass_rng(pass_name):
            return self.protein_tower(input_ids=ids, attention_mask=am).last_hidden_state

    def _text_hidden(self, ids: torch.Tensor, am: torch.Tensor) -> torch.Tensor:
        with self._text_ctx(), _pass_rng("text"):
            return self.text_tower(input_ids=ids, attention_mask=am).last_hidden_state

    def _protein_hidden_packed(self, ids: torch.Tensor, pos: torch.Tensor, seqs: PackedSeqs,
                               pass_name: str = "protein") -> torch.Tensor:
        with _pass_rng(pass_name):
            return packed_hidden(self.protein_tower, ids, pos, seqs)

    def _text_hidden_packed(self, ids: torch.Tensor, pos: torch.Tensor, seqs: PackedSeqs,
                            pass_name: str = "text") -> torch.Tensor:
        with self._text_ctx(), _pass_rng(pass_name):
            return packed_hidden(self.text_tower, ids, pos, seqs)

    def _pool_protein_packed(self, h: torch.Tensor, ids: torch.Tensor, seqs: PackedSeqs) -> torch.Tensor:
        """Per-protein mean of a packed row: residues only (paper) or every token of the protein (released, its
        plain mean without the padding a padded batch would add)."""
        mask = None if self.released else residue_mask(ids, torch.ones_like(ids))[0]
        return segment_mean(h[0], seqs, mask)

    def scales(self) -> tuple[torch.Tensor, torch.Tensor]:
        """GC and PDA logit multipliers: exp of the learnable log-scales clamped at ln(max_logit_scale)."""
        return (
            self.logit_scale.clamp(max=self._max_log_scale).exp(),
            self.local_logit_scale.clamp(max=self._max_log_scale).exp(),
        )

    # ------------------------------------------------------------------------------------------ encoders
    def encode_protein(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                       cu_seqlens: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
                       ) -> torch.Tensor:
        """L2-normalised protein embeddings ``[B, D]`` in the joint space (a packed row when ``cu_seqlens``)."""
        if cu_seqlens is not None:
            seqs = PackedSeqs.from_cu_seqlens(cu_seqlens)
            h = self._protein_hidden_packed(input_ids, position_ids, seqs)
            return F.normalize(self.protein_proj(self._pool_protein_packed(h, input_ids, seqs)), dim=-1)
        h = self._protein_hidden(input_ids, attention_mask)
        return F.normalize(self.protein_proj(self._pool_protein(h, input_ids, attention_mask)), dim=-1)

    def encode_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    cu_seqlens: torch.Tensor | None = None, position_ids: torch.Tensor | None = None
                    ) -> torch.Tensor:
        """L2-normalised text embeddings ``[B, D]`` in the joint space (a packed row when ``cu_seqlens``)."""
        if cu_seqlens is not None:
            seqs = PackedSeqs.from_cu_seqlens(cu_seqlens)
            g = self._text_hidden_packed(input_ids, position_ids, seqs)
            return F.normalize(self.text_proj(segment_mean(g[0], seqs)), dim=-1)
        g = self._text_hidden(input_ids, attention_mask)
        return F.normalize(self.text_proj(self._pool_text(g, attention_mask)), dim=-1)

    def mlm_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Residue-vocabulary logits ``[B, L, 33]`` of the MLM head (mutation-effect scoring, eval)."""
        return self.mlm_head(self._protein_hidden(input_ids, attention_mask, "mlm"))

    # ------------------------------------------------------------------------------------------ forward
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Run, in this fixed order, the passes the enabled objectives need (objective registry) and return
        the features they read; the order and the pass names (RNG keys) are part of the numerics."""
        if PACKED_MARKER in batch:
            return self._forward_packed(batch)
        passes, want = needed_passes(self.loss_cfg), needed_features(self.loss_cfg)
        out: dict[str, torch.Tensor] = {}
        g = text_am = None
        ids, am = batch["protein_input_ids"], batch["protein_attention_mask"]
        out["logit_scale"], out["local_logit_scale"] = self.scales()

        if "protein" in passes:
            h = self._protein_hidden(ids, am)
            if "protein_features" in want:
                out["protein_features"] = F.normalize(
                    self.protein_proj(self._pool_protein(h, ids, am)), dim=-1
                )
            if "pda_tokens" in want:
                # Linear returns a 3-D input's result as a view of its 2-D matmul, and an in-place op on a view
                # output would drop FSDP2's pre-backward hook (FSDP2 warns): return an owned copy instead
                out["pda_tokens"] = self.protein_proj(h).clone()
                out["pda_token_mask"] = (
                    torch.ones_like(am, dtype=torch.bool) if self.released else residue_mask(ids, am)
                )
        if "text" in passes:
            text_am = batch["text_attention_mask"]
            g = self._text_hidden(batch["text_input_ids"], text_am)
            if "text_features" in want:
                out["text_features"] = F.normalize(self.text_proj(self._pool_text(g, text_am)), dim=-1)
        if "mlm" in passes:
            h_mlm = self._protein_hidden(batch["mlm_input_ids"], am, "mlm")
            sel = batch["mlm_labels"] != IGNORE_INDEX
            out["mlm_logits"] = self.mlm_head(h_mlm[sel])
            out["mlm_labels"] = batch["mlm_labels"][sel]
        if "span" in passes:
            if g is None:
                raise ValueError("the span pass fuses the text pass's tokens: an objective needing it needs 'text'")
            out.update(self._bsr(batch, am, g, text_am))
        if "subtexts" in passes:
            out["pda_queries"] = self._property_queries(
                batch["subtext_input_ids"], batch["subtext_attention_mask"]
            )
        return out

    def _bsr(self, batch, am, g, text_am) -> dict[str, torch.Tensor]:
        # released: everything up to the decoder output is computed without grad, so only the head learns
        with torch.no_grad() if self.released else contextlib.nullcontext():
            tokens = self.protein_proj(self._protein_hidden(batch["span_input_ids"], am, "span"))
            fused = self.decoder(tokens, self.text_proj(g), None if self.released else text_am)
        sel = batch["span_labels"] != IGNORE_INDEX
        return {"bsr_logits": self.bsr_head(fused[sel]), "bsr_labels": batch["span_labels"][sel]}

    def _forward_packed(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """:meth:`forward` on a packed batch (``protclip.data.collate.pack_batch``): the same passes, pass names
        and features, per sequence. Token features stay packed: ``pda_tokens`` ``[T, D]`` with ``pda_token_mask``
        ``[T]`` and ``pda_cu_seqlens``; MLM/BSR logits are the selected tokens in the same order as padded."""
        passes, want = needed_passes(self.loss_cfg), needed_features(self.loss_cfg)
        out: dict[str, torch.Tensor] = {}
        ids, pos = batch["protein_input_ids"], batch["protein_position_ids"]
        prot = PackedSeqs.from_cu_seqlens(batch["protein_cu_seqlens"])
        out["logit_scale"], out["local_logit_scale"] = self.scales()
        g = text = None
        if "protein" in passes:
            h = self._protein_hidden_packed(ids, pos, prot)
            if "protein_features" in want:
                out["protein_features"] = F.normalize(self.protein_proj(self._pool_protein_packed(h, ids, prot)),
                                                      dim=-1)
            if "pda_tokens" in want:
                out["pda_tokens"] = self.protein_proj(h[0])
                out["pda_token_mask"] = (torch.ones_like(ids[0], dtype=torch.bool) if self.released
                                         else residue_mask(ids, torch.ones_like(ids))[0])
                out["pda_cu_seqlens"] = batch["protein_cu_seqlens"]
        if "text" in passes:
            text = PackedSeqs.from_cu_seqlens(batch["text_cu_seqlens"])
            g = self._text_hidden_packed(batch["text_input_ids"], batch["text_position_ids"], text)
            if "text_features" in want:
                out["text_features"] = F.normalize(self.text_proj(segment_mean(g[0], text)), dim=-1)
        if "mlm" in passes:
            h_mlm = self._protein_hidden_packed(batch["mlm_input_ids"], pos, prot, "mlm")
            sel = batch["mlm_labels"] != IGNORE_INDEX
            out["mlm_logits"] = self.mlm_head(h_mlm[sel])
            out["mlm_labels"] = batch["mlm_labels"][sel]
        if "span" in passes:
            if g is None or text is None:
                raise ValueError("the span pass fuses the text pass's tokens: an objective needing it needs 'text'")
            with torch.no_grad() if self.released else contextlib.nullcontext():
                h_span = self._protein_hidden_packed(batch["span_input_ids"], pos, prot, "span")
                fused = self.decoder.forward_packed(self.protein_proj(h_span[0]), self.text_proj(g[0]),
                                                    prot.seqlens, text.seqlens)
            sel = batch["span_labels"][0] != IGNORE_INDEX
            out["bsr_logits"] = self.bsr_head(fused[sel])
            out["bsr_labels"] = batch["span_labels"][0][sel]
        if "subtexts" in passes:
            sub = PackedSeqs.from_cu_seqlens(batch["subtext_cu_seqlens"])
            n = len(prot.seqlens)
            if len(sub.seqlens) % n:
                raise ValueError(f"packed batch: {len(sub.seqlens)} sub-texts for {n} proteins")
            with _pass_rng("pda"):
                with torch.no_grad():
                    g_sub = packed_hidden(self.text_tower, batch["subtext_input_ids"], batch["subtext_position_ids"],
                                          sub)
                    u = self.text_proj(segment_mean(g_sub[0], sub)).reshape(n, len(sub.seqlens) // n, -1)
                out["pda_queries"] = self.prototypes(u)
        return out

    def _property_queries(self, sub_ids: torch.Tensor, sub_am: torch.Tensor) -> torch.Tensor:
        """Prototype-quantised property embeddings ``[B, K, D]``; grad reaches only the prototypes."""
        b, k, ls = sub_ids.shape
        with _pass_rng("pda"):
            with torch.no_grad():
                flat_am = sub_am.reshape(b * k, ls)
                g = self.text_tower(
                    input_ids=sub_ids.reshape(b * k, ls), attention_mask=flat_am
                ).last_hidden_state
                u = self.text_proj(self._pool_text(g, flat_am)).reshape(b, k, -1)
            return self.prototypes(u)


def build_model(model_cfg: ModelConfig, loss_cfg: LossConfig | None = None) -> ProtCLIPModel:
    return ProtCLIPModel(model_cfg, loss_cfg)


def param_groups(
    model: nn.Module, base_lr: float, protein_lr_ratio: float = 0.1, weight_decay: float = 0.0
) -> list[dict]:
    """Optimizer groups: the protein tower at ``base_lr * protein_lr_ratio``, every other trainable parameter
    at ``base_lr``; weight decay only on matrices (not biases, norms or the 1-D logit scales).

    Selection is by parameter name, so it works before or after FSDP2 wraps the model. Frozen parameters
    (text tower by default, ESM contact head) are left out, so they get no optimizer state.
    """
    groups: dict[tuple[bool, bool], list[nn.Parameter]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        is_protein = name.startswith("protein_tower.") or ".protein_tower." in name
        decay = p.ndim >= 2 and weight_decay > 0
        groups.setdefault((is_protein, decay), []).append(p)
    out = []
    for (is_protein, decay), params in sorted(groups.items()):
        out.append({
            "name": ("protein_tower" if is_protein else "heads") + ("_decay" if decay else ""),
            "params": params,
            "lr": base_lr * (protein_lr_ratio if is_protein else 1.0),
            "weight_decay": weight_decay if decay else 0.0,
        })  # fmt: skip
    return out


def export_towers(
    model: ProtCLIPModel, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None
) -> Path:
    """Write ``protein/`` and ``text/`` (HF ``save_pretrained`` dirs with tokenizers) and ``heads.safetensors``.

    Plain transformers loads the towers (``EsmModel``/``BertModel.from_pretrained``). Under FSDP2 pass the full
    unsharded ``state_dict`` (e.g. ``get_model_state_dict(..., full_state_dict=True, cpu_offload=True)``).
    """
    from safetensors.torch import save_file

    from protclip.data.tokenizers import ProteinTokenizer, load_text_tokenizer, text_tokenizer_dir

    directory = Path(directory)
    sd = state_dict if state_dict is not None else model.state_dict()
    parts: dict[str, dict[str, torch.Tensor]] = {"protein_tower.": {}, "text_tower.": {}, "": {}}
    for key, value in sd.items():
        prefix = next((p for p in ("protein_tower.", "text_tower.") if key.startswith(p)), "")
        parts[prefix][key[len(prefix) :]] = value.detach().cpu().contiguous()
    model.protein_tower.save_pretrained(directory / "protein", state_dict=parts["protein_tower."])
    ProteinTokenizer().to_hf().save_pretrained(directory / "protein")
    model.text_tower.save_pretrained(directory / "text", state_dict=parts["text_tower."])
    load_text_tokenizer(text_tokenizer_dir(model.cfg.text_model, model.cfg.text_tokenizer)).save_pretrained(
        directory / "text"
    )
    save_file(parts[""], str(directory / "heads.safetensors"))
    return directory
