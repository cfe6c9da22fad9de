"""The CLOUD encoder: a BERT-style transformer over SCOPE token ids, written for speed.

Two layouts share one set of modules (and so one parameter count and state-dict layout):

* ``prenorm=True`` (default, for new pre-training): ``x + f(LN(x))`` residual blocks and a
  final LayerNorm, which trains stably at depth without warm-up tricks.
* ``prenorm=False``: the exact post-LN BERT layout ``LN(x + f(x))``, used to import the
  released Hugging Face CLOUD checkpoint (see ``cloud.hf``).

The encoder computes on real tokens only (``cloud.packed``): a padded batch is unpacked to
its N real tokens ([N, d], with cumulative sequence lengths) before the embeddings and padded
back after the last layer, and a packed batch (``cu_seqlens``: several strings one after the
other, positions restarting at each) is taken as it is. Only attention knows where a
sequence ends. ``CloudModel.compute_padded = True`` runs the reference padded layout instead
(every position of [B, T], a ``[B, 1, 1, T]`` key mask to SDPA), which the Hugging Face
equivalence tests pin; the two agree to float tolerance. Pure PyTorch: distributed wrapping
lives in ``train/``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cloud.dropout import Dropout
from cloud.packed import (
    PackedSequences,
    Unpadding,
    cu_seqlens_of,
    pack_layout,
    packed_attention,
    sequence_index,
    unpad,
)

T = TypeVar("T")

IGNORE_INDEX = -100
"""Label value of positions that are not predicted (not masked), as in BERT / PyTorch CE."""


@dataclass
class CloudConfig:
    """Shape and regularisation of a CLOUD model; JSON-safe through ``to_dict``/``from_dict``."""

    vocab_size: int
    """Number of token ids (the SCOPE tokenizer's vocabulary, special tokens included)."""
    max_position_embeddings: int = 128
    """Longest sequence the learned position table covers, [CLS] and [SEP] included."""
    hidden_size: int = 768
    """Width d of the residual stream."""
    num_layers: int = 12
    """Number of transformer blocks."""
    num_heads: int = 12
    """Attention heads per block; must divide hidden_size."""
    intermediate_size: int = 3072
    """Inner width of the GELU MLP."""
    hidden_dropout: float = 0.1
    """Dropout on embeddings and on each residual branch (training mode only)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities (training mode only)."""
    layer_norm_eps: float = 1e-12
    """LayerNorm epsilon; 1e-12 is BERT's value and what the released checkpoint used."""
    prenorm: bool = True
    """Pre-LayerNorm blocks plus a final LayerNorm; False gives the exact post-LN BERT layout."""
    num_segments: int = 3
    """Segment-embedding rows: 0 = none; 3 = generator / Wyckoff / composition segments
    (ids 0 / 1 / 2). BERT's token_type embeddings map onto these."""
    pad_token_id: int = 0
    """Id of the padding token; its embedding row starts at zero."""
    tie_word_embeddings: bool = True
    """Share the MLM decoder weight with the input word embeddings."""
    initializer_range: float = 0.02
    """Standard deviation of the normal init of linear and embedding weights."""
    token_features: str | None = None
    """Fixed physical features per token (``cloud.token_features.FEATURE_SETS``, e.g.
    "elements-v1": element properties, fraction values, multiplicities), projected by a learned
    linear map and added to the word embedding; None: word embeddings only (the released
    layout)."""

    def __post_init__(self) -> None:
        for name in ("vocab_size", "max_position_embeddings", "hidden_size", "num_heads"):
            if getattr(self, name) <= 0:
                raise ValueError(f"CloudConfig.{name} must be positive, got {getattr(self, name)}")
        if self.num_layers < 0 or self.intermediate_size <= 0 or self.num_segments < 0:
            raise ValueError(
                "CloudConfig needs num_layers >= 0, intermediate_size > 0 and num_segments >= 0"
            )
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}"
            )
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"pad_token_id {self.pad_token_id} outside [0, {self.vocab_size})")
        if self.token_features is not None:
            from cloud.token_features import FEATURE_SETS

            if self.token_features not in FEATURE_SETS:
                raise ValueError(
                    f"CloudConfig.token_features {self.token_features!r} is not one of "
                    f"{FEATURE_SETS} (or null)"
                )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> CloudConfig:
        """Inverse of ``to_dict``; unknown keys are an error, not silently dropped."""
        return dataclass_from_dict(cls, values)


def dataclass_from_dict(cls: type[T], values: Mapping[str, Any]) -> T:
    """``cls(**values)`` for a config dataclass, refusing keys it does not have by name."""
    known = {field.name for field in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {unknown}; valid keys: {sorted(known)}")
    return cls(**values)


class Embeddings(nn.Module):
    """Word + learned position (+ segment) (+ projected token-feature) embeddings, then
    LayerNorm and dropout (as BERT).

    With ``config.token_features`` the module holds ``feature_table`` ([vocab, k], a
    persistent buffer: zeros until ``set_feature_table`` fills it from the tokenizer's tokens,
    then saved and loaded with the weights) and ``feature_projection`` (k → d, learned).
    """

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.word = nn.Embedding(config.vocab_size, config.hidden_size)
        self.feature_projection: nn.Linear | None = None
        if config.token_features is not None:
            from cloud.token_features import num_token_features

            width = num_token_features(config.token_features)
            self.register_buffer("feature_table", torch.zeros(config.vocab_size, width))
            self.feature_projection = nn.Linear(width, config.hidden_size)
        self.position = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.segment = (
            nn.Embedding(config.num_segments, config.hidden_size) if config.num_segments else None
        )
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(
        self,
        input_ids: Tensor,
        segment_ids: Tensor | None = None,
        position_ids: Tensor | None = None,
    ) -> Tensor:
        """[B, T] ids (positions 0..T-1) or any shape with ``position_ids`` of that shape
        (packed tokens: [N]) → embeddings [..., d]."""
        if position_ids is None:
            seq_len = input_ids.shape[1]
            if seq_len > self.position.num_embeddings:
                raise ValueError(
                    f"sequence length {seq_len} exceeds max_position_embeddings "
                    f"{self.position.num_embeddings}"
                )
            position_ids = torch.arange(seq_len, device=input_ids.device)
        x = self.word(input_ids) + self.position(position_ids)
        x = x + self._segment_embedding(input_ids, segment_ids)
        if self.feature_projection is not None:
            x = x + self.feature_projection(self.feature_table[input_ids])
        return self.dropout(self.norm(x))

    def set_feature_table(self, table: Tensor) -> None:
        """Fill the token-feature buffer ([vocab, k], from ``cloud.token_features``)."""
        if self.feature_projection is None:
            raise ValueError("this model has no token features (CloudConfig.token_features)")
        buffer: Tensor = self.feature_table  # type: ignore[assignment]
        if tuple(table.shape) != tuple(buffer.shape):
            raise ValueError(
                f"token-feature table of shape {tuple(table.shape)}; the model expects "
                f"{tuple(buffer.shape)}"
            )
        with torch.no_grad():
            buffer.copy_(table)

    def _segment_embedding(self, input_ids: Tensor, segment_ids: Tensor | None) -> Tensor | float:
        if self.segment is None:
            if segment_ids is not None:
                raise ValueError("segment_ids given but the config has num_segments=0")
            return 0.0
        if segment_ids is None:
            # Same default as BERT's token_type_ids: everything in segment 0, which keeps
            # imported checkpoints exact when the caller has no segment information.
            return self.segment.weight[0]
        return self.segment(segment_ids)


class SelfAttention(nn.Module):
    """Multi-head self-attention with one fused QKV projection and SDPA."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.num_heads = config.num_heads
        self.head_dim = config.head_dim
        self.dropout_p = config.attention_dropout
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size)
        self.out = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(self, x: Tensor, key_mask: Tensor | PackedSequences | None) -> Tensor:
        """x [B, T, d] with a [B, 1, 1, T] key mask (or None), or packed tokens [N, d] with
        their ``PackedSequences``."""
        dropout_p = self.dropout_p if self.training else 0.0
        if isinstance(key_mask, PackedSequences):
            qkv = self.qkv(x).view(x.shape[0], 3, self.num_heads, self.head_dim)
            return self.out(packed_attention(qkv, key_mask, dropout_p).flatten(1))
        batch, seq_len, width = x.shape
        qkv = self.qkv(x).view(batch, seq_len, 3, self.num_heads, self.head_dim)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T, head_dim]
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)
        return self.out(attended.transpose(1, 2).reshape(batch, seq_len, width))


class MLP(nn.Module):
    """Position-wise feed-forward: Linear → GELU (exact erf form, as BERT) → Linear."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.up = nn.Linear(config.hidden_size, config.intermediate_size)
        self.down = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.down(F.gelu(self.up(x)))


class Block(nn.Module):
    """One transformer block, pre-LN or post-LN depending on ``config.prenorm``."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.prenorm = config.prenorm
        self.attention = SelfAttention(config)
        self.attention_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = MLP(config)
        self.mlp_norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout)

    def forward(self, x: Tensor, key_mask: Tensor | PackedSequences | None) -> Tensor:
        if self.prenorm:
            x = x + self.dropout(self.attention(self.attention_norm(x), key_mask))
            return x + self.dropout(self.mlp(self.mlp_norm(x)))
        x = self.attention_norm(x + self.dropout(self.attention(x, key_mask)))
        return self.mlp_norm(x + self.dropout(self.mlp(x)))


def key_padding_mask(attention_mask: Tensor | None) -> Tensor | None:
    """[B, T] 1/0 (or bool) mask → boolean [B, 1, 1, T] SDPA mask, True = may attend.

    Broadcast over heads and queries, so SDPA never sees a per-head copy. Padded query rows
    still attend to the real keys (their outputs are ignored), so no row is fully masked and
    no NaN appears as long as every sequence has at least one real token.
    """
    if attention_mask is None:
        return None
    return attention_mask.bool()[:, None, None, :]


class CloudModel(nn.Module):
    """The encoder: embeddings and blocks; returns the last hidden states ([B, T, d] for a
    padded batch, [N, d] for a packed one)."""

    compute_padded: bool = False
    """True: run padded batches over every position of [B, T] (the reference layout, as the
    released stack computes); False (default): on their real tokens only. Set per instance."""
    attention_impl: str = "auto"
    """Attention over packed sequences (``cloud.packed.ATTENTION_IMPLS``). Set per instance."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.config = config
        self.embeddings = Embeddings(config)
        self.layers = nn.ModuleList(Block(config) for _ in range(config.num_layers))
        # Pre-LN leaves the residual stream un-normalised; post-LN BERT already ends on an LN.
        self.final_norm = (
            nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps) if config.prenorm else None
        )
        self.init_weights()

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> Tensor:
        """Padded: input_ids [B, T]; attention_mask [B, T] with 1 on real tokens (None = no
        padding); segment_ids [B, T] in [0, num_segments) or None (= segment 0) → [B, T, d]
        (zeros on the padding).

        Packed: input_ids [N], several sequences one after the other, ``cu_seqlens`` [S + 1]
        their cumulative lengths (``max_seqlen`` the longest, read off them when None),
        segment_ids and position_ids [N] (positions default to 0.. within each sequence)
        → [N, d]; each token attends to its own sequence only.
        """
        hidden, unpadding = self.hidden_states(
            input_ids,
            attention_mask,
            segment_ids,
            position_ids=position_ids,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
        )
        return hidden if unpadding is None else unpadding.pad(hidden)

    def hidden_states(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> tuple[Tensor, Unpadding | None]:
        """The last hidden states as computed, and how they map onto the caller's batch.

        Same arguments as ``forward``. A padded batch with padding (and ``compute_padded``
        off) comes back packed, [N, d], with the ``Unpadding`` that pads it back (or picks the
        same positions out of [B, T] labels); otherwise the ``Unpadding`` is None and the
        states are in the caller's layout.
        """
        if cu_seqlens is not None:
            if input_ids.dim() != 1:
                raise ValueError(f"packed input_ids must be [N], got {tuple(input_ids.shape)}")
            layout = self._layout(cu_seqlens, max_seqlen, input_ids)
            if position_ids is None:
                position_ids = layout.token_position
            return self._encode(input_ids, segment_ids, position_ids, layout), None
        if attention_mask is None or self.compute_padded or bool(attention_mask.all()):
            mask = None if attention_mask is None or not self.compute_padded else attention_mask
            key_mask = key_padding_mask(mask)
            return self._encode(input_ids, segment_ids, position_ids, key_mask), None
        unpadding, lengths, positions = unpad(attention_mask)
        if position_ids is not None:
            positions = unpadding.pack(position_ids)
        segments = None if segment_ids is None else unpadding.pack(segment_ids)
        tokens = unpadding.pack(input_ids)
        layout = self._layout(cu_seqlens_of(lengths), input_ids.shape[1], tokens)
        return self._encode(tokens, segments, positions, layout), unpadding

    def _layout(
        self, cu_seqlens: Tensor, max_seqlen: int | None, input_ids: Tensor
    ) -> PackedSequences:
        return pack_layout(
            cu_seqlens,
            max_seqlen,
            self.attention_impl,
            device_type=input_ids.device.type,
            num_tokens=input_ids.shape[0],
        )

    def _encode(
        self,
        input_ids: Tensor,
        segment_ids: Tensor | None,
        position_ids: Tensor | None,
        key_mask: Tensor | PackedSequences | None,
    ) -> Tensor:
        x = self.embeddings(input_ids, segment_ids, position_ids)
        for layer in self.layers:
            x = layer(x, key_mask)
        return self.final_norm(x) if self.final_norm is not None else x

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
        pooling: str = "cls",
        *,
        cu_seqlens: Tensor | None = None,
    ) -> Tensor:
        """One embedding per sequence for fine-tuning heads (see ``pool``): [B, d], or
        [B, 2d] for ``cls+mean``; packed batches (``cu_seqlens``) give one per sequence."""
        hidden = self.forward(input_ids, attention_mask, segment_ids, cu_seqlens=cu_seqlens)
        if cu_seqlens is not None:
            return pool_packed(hidden, cu_seqlens, pooling)
        return pool(hidden, attention_mask, pooling)

    def init_weights(self) -> None:
        """Re-initialise every parameter: normal(0, initializer_range), zero biases, LN ones."""
        init_weights_of(self, self.config)
        with torch.no_grad():
            # Padding carries no information; starting its row at zero matches BERT.
            self.embeddings.word.weight[self.config.pad_token_id].zero_()

    def set_token_features(self, tokens: Sequence[str]) -> None:
        """Fill the token-feature table from the vocabulary's tokens (in id order).

        Called once when a model with ``config.token_features`` is created from scratch;
        loading a package restores the table with the weights.
        """
        from cloud.token_features import token_feature_table

        if self.config.token_features is None:
            raise ValueError("this model has no token features (CloudConfig.token_features)")
        if len(tokens) != self.config.vocab_size:
            raise ValueError(f"{len(tokens)} tokens for a vocabulary of {self.config.vocab_size}")
        self.embeddings.set_feature_table(token_feature_table(tokens, self.config.token_features))

    def embedding_parameters(self) -> list[nn.Parameter]:
        """The lookup tables (word, position, segment) and the token-feature projection (an
        input embedding of the features): excluded from non-embedding counts."""
        embeddings = self.embeddings
        tables = [embeddings.word, embeddings.position, embeddings.segment]
        params = [table.weight for table in tables if table is not None]
        if embeddings.feature_projection is not None:
            params += [embeddings.feature_projection.weight, embeddings.feature_projection.bias]
        return params


POOLINGS: tuple[str, ...] = ("cls", "mean", "cls+mean")
"""How ``pool`` turns hidden states into one vector per sequence."""


def pool(hidden: Tensor, attention_mask: Tensor | None, pooling: str) -> Tensor:
    """[B, T, d] hidden states → [B, d] (``cls``: position 0; ``mean``: the mean over real
    tokens) or [B, 2d] (``cls+mean``: both, concatenated)."""
    if pooling == "cls":
        return hidden[:, 0]
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {POOLINGS}")
    if attention_mask is None:
        mean = hidden.mean(dim=1)
    else:
        weights = attention_mask.to(hidden.dtype).unsqueeze(-1)
        mean = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)
    return mean if pooling == "mean" else torch.cat([hidden[:, 0], mean], dim=-1)


def pool_packed(hidden: Tensor, cu_seqlens: Tensor, pooling: str) -> Tensor:
    """``pool`` for packed hidden states [N, d] with cumulative lengths [S + 1] → [S, d]
    (or [S, 2d]): [CLS] is each sequence's first token, the mean is over its tokens."""
    if pooling not in POOLINGS:
        raise ValueError(f"unknown pooling {pooling!r}; valid: {POOLINGS}")
    starts = cu_seqlens[:-1].long()
    cls = hidden[starts]
    if pooling == "cls":
        return cls
    index = sequence_index(cu_seqlens, hidden.shape[0])
    sums = hidden.new_zeros(starts.numel(), hidden.shape[1]).index_add(0, index, hidden)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).to(hidden.dtype).unsqueeze(-1)
    mean = sums / lengths
    return mean if pooling == "mean" else torch.cat([cls, mean], dim=-1)


def init_module(module: nn.Module, config: CloudConfig) -> None:
    """BERT initialisation of one module (meant for ``Module.apply``)."""
    if isinstance(module, nn.Linear):
        nn.init.normal_(module.weight, mean=0.0, std=config.initializer_range)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=config.initializer_range)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def init_weights_of(module: nn.Module, config: CloudConfig) -> None:
    """Apply ``init_module`` to ``module`` and all its children."""
    module.apply(lambda child: init_module(child, config))


class MaskedLMHead(nn.Module):
    """BERT's MLM head: dense → GELU → LayerNorm → decoder (tied to embeddings) + bias."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.norm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.decoder = nn.Linear(config.hidden_size, config.vocab_size)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.decoder(self.norm(F.gelu(self.dense(hidden))))


@dataclass
class MaskedLMOutput:
    """What ``CloudForMaskedLM.forward`` returns."""

    logits: Tensor
    """Without labels: [B, T, V] ([N, V] for a packed batch). With labels: [N_pred, V], one
    row per position whose label is not -100, in row-major (batch, then position) order, which
    is the packed order; ``masked_labels`` holds their targets."""
    loss: Tensor | None = None
    """Mean cross-entropy over the predicted positions; None without labels."""
    hidden_states: Tensor | None = None
    """Last encoder hidden states [B, T, d], zeros on padding ([N, d] for a packed batch;
    after the final LayerNorm when pre-LN)."""
    masked_labels: Tensor | None = None
    """[N] targets aligned with ``logits`` rows when labels are given (for accuracy metrics)."""


class CloudForMaskedLM(nn.Module):
    """CLOUD encoder plus the BERT MLM head; the pre-training model."""

    def __init__(self, config: CloudConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = CloudModel(config)
        self.head = MaskedLMHead(config)
        init_weights_of(self.head, config)
        if config.tie_word_embeddings:
            # Same Parameter object: one storage, one gradient, one optimiser state.
            self.head.decoder.weight = self.encoder.embeddings.word.weight

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        segment_ids: Tensor | None = None,
        *,
        position_ids: Tensor | None = None,
        cu_seqlens: Tensor | None = None,
        max_seqlen: int | None = None,
    ) -> MaskedLMOutput:
        """MLM forward over a padded batch ([B, T] inputs and labels) or a packed one ([N]
        inputs and labels with ``cu_seqlens``, see ``CloudModel.forward``). With ``labels``
        (-100 where not predicted) the vocabulary projection runs only at predicted positions,
        so ``logits`` is [N_pred, V] (see ``MaskedLMOutput``); without labels ``logits``
        covers every position."""
        hidden, unpadding = self.encoder.hidden_states(
            input_ids,
            attention_mask,
            segment_ids,
            position_ids=position_ids,
            cu_seqlens=cu_seqlens,
            max_seqlen=max_seqlen,
        )
        full = hidden if unpadding is None else unpadding.pad(hidden)
        if labels is None:
            return MaskedLMOutput(logits=self.head(full), hidden_states=full)
        # Packed tokens keep the batch's row-major order, so these are labels[labels != -100].
        token_labels = labels if unpadding is None else unpadding.pack(labels)
        predicted = token_labels != IGNORE_INDEX
        targets = token_labels[predicted]
        logits = self.head(hidden[predicted])
        return MaskedLMOutput(
            logits=logits,
            loss=masked_lm_loss(logits, targets),
            hidden_states=full,
            masked_labels=targets,
        )

    def encode(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        segment_ids: Tensor | None = None,
    ) -> Tensor:
        """The [CLS] embedding (position 0) of each sequence, [B, d]."""
        return self.encoder.encode(input_ids, attention_mask, segment_ids)

    def set_token_features(self, tokens: Sequence[str]) -> None:
        """See ``CloudModel.set_token_features``."""
        self.encoder.set_token_features(tokens)

    def init_weights(self) -> None:
        """Re-initialise every parameter (the tied decoder follows the word embeddings)."""
        # Head first: when tied, its decoder weight *is* the word table the encoder then sets.
        init_weights_of(self.head, self.config)
        self.encoder.init_weights()

    def embedding_parameters(self) -> list[nn.Parameter]:
        """Input lookup tables, plus the decoder weight when it is a separate output table."""
        tables = self.encoder.embedding_parameters()
        if not self.config.tie_word_embeddings:
            tables.append(self.head.decoder.weight)
        return tables


def masked_lm_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean cross-entropy over predicted rows; 0 (not NaN) when a batch predicts nothing."""
    total = F.cross_entropy(logits.float(), targets, reduction="sum")
    return total / max(targets.numel(), 1)
