"""Packed (unpadded) sequences: the layout the encoder computes on.

A batch of S sequences is held as its N real tokens, one after the other ([N] ids, [N, d]
activations) with ``cu_seqlens`` ([S + 1], the cumulative lengths: sequence s is tokens
``cu_seqlens[s]:cu_seqlens[s + 1]``), as FlashAttention's variable-length kernels expect. The
embeddings, every projection, the MLP and the LayerNorms then run on real tokens only, and
only attention needs to know where one sequence ends:

* on CUDA, with bf16/fp16 activations, ``torch.nn.attention.varlen.varlen_attn`` (the fused
  FlashAttention varlen kernel) reads the packed tensors directly;
* elsewhere (CPU, fp32) the fastest exact path measured on the project's CPUs
  (``benchmarks/train_throughput.py --attention``) is to scatter q, k and v into a
  ``[S, H, T_max, hd]`` buffer for the attention core alone and run it there with a key mask:
  its cost grows with S·T_max² only, a few per cent of a layer's FLOPs for SCOPE strings,
  while per-length grouping, a block-diagonal mask over all N tokens and nested (jagged)
  tensors were slower or have no CPU kernel.

Everything here is pure PyTorch and knows nothing of how batches are made; the loader's
packing lives in ``train.data``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from cloud.dropout import dropout

ATTENTION_IMPLS: tuple[str, ...] = ("auto", "varlen", "sdpa", "math")
"""How attention over packed sequences is computed: ``varlen`` the fused CUDA kernel,
``sdpa`` / ``math`` the padded attention core through ``scaled_dot_product_attention`` or
through explicit matmuls and softmax; ``auto`` picks ``varlen`` where it can run, else
``math`` on CPU and ``sdpa`` on other devices (see :func:`resolve_attention_impl`)."""


@dataclass(frozen=True)
class PackedSequences:
    """Where each sequence of a packed batch lies, and what its attention core needs."""

    cu_seqlens: Tensor
    """[S + 1] int32 cumulative lengths, 0 first, N last (on the activations' device)."""
    max_seqlen: int
    """Longest sequence, T_max."""
    token_sequence: Tensor
    """[N] long: the sequence of each token."""
    token_position: Tensor
    """[N] long: each token's position within its sequence."""
    key_mask: Tensor
    """[S, 1, 1, T_max] bool, True on the real keys of each sequence."""
    impl: str
    """The attention implementation (one of ``ATTENTION_IMPLS``, ``auto`` resolved)."""

    @property
    def num_sequences(self) -> int:
        return self.cu_seqlens.numel() - 1

    @property
    def num_tokens(self) -> int:
        return self.token_sequence.numel()

    @property
    def uniform(self) -> bool:
        """Every sequence has length T_max: the attention buffer is a plain view."""
        return self.num_tokens == self.num_sequences * self.max_seqlen


def cu_seqlens_of(lengths: Tensor) -> Tensor:
    """[S] lengths → [S + 1] int32 cumulative lengths starting at 0."""
    cu = torch.zeros(lengths.numel() + 1, dtype=torch.int32, device=lengths.device)
    cu[1:] = torch.cumsum(lengths, 0)
    return cu


def sequence_index(cu_seqlens: Tensor, num_tokens: int) -> Tensor:
    """[N] long: the sequence each packed token belongs to."""
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    return torch.repeat_interleave(
        torch.arange(lengths.numel(), device=cu_seqlens.device), lengths, output_size=num_tokens
    )


def pack_layout(
    cu_seqlens: Tensor,
    max_seqlen: int | None = None,
    impl: str = "auto",
    *,
    device_type: str,
    num_tokens: int | None = None,
) -> PackedSequences:
    """The ``PackedSequences`` of ``cu_seqlens``.

    ``max_seqlen`` and ``num_tokens`` are read off ``cu_seqlens`` when None, which costs a
    device sync on GPUs (and a graph break under ``torch.compile``): the model passes the
    token count it knows from its input, and loaders pass the longest length. On CPU the
    lengths are checked (each at least 1); on GPUs that check would sync every step.
    """
    cu_seqlens = cu_seqlens.to(torch.int32)
    lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    if device_type == "cpu" and (lengths.numel() == 0 or bool((lengths < 1).any())):
        raise ValueError("packed sequences need at least one sequence, each of length >= 1")
    longest = int(lengths.max()) if max_seqlen is None else int(max_seqlen)
    tokens = int(cu_seqlens[-1]) if num_tokens is None else num_tokens
    index = sequence_index(cu_seqlens, tokens)
    positions = torch.arange(tokens, device=cu_seqlens.device) - cu_seqlens[:-1].long()[index]
    key_mask = torch.arange(longest, device=cu_seqlens.device)[None, :] < lengths[:, None]
    return PackedSequences(
        cu_seqlens=cu_seqlens,
        max_seqlen=longest,
        token_sequence=index,
        token_position=positions,
        key_mask=key_mask[:, None, None, :],
        impl=resolve_attention_impl(impl, device_type),
    )


def varlen_kernel_available() -> bool:
    """Whether torch ships the fused varlen attention and a CUDA device can run it."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


def resolve_attention_impl(impl: str, device_type: str) -> str:
    """``auto`` → ``varlen`` on CUDA when the kernel exists, ``math`` on CPU (measured
    fastest there), else ``sdpa``; any other value is checked and returned."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"unknown attention implementation {impl!r}; valid: {ATTENTION_IMPLS}")
    if impl != "auto":
        return impl
    if device_type == "cuda" and varlen_kernel_available():
        return "varlen"
    return "math" if device_type == "cpu" else "sdpa"


def packed_attention(qkv: Tensor, layout: PackedSequences, dropout_p: float = 0.0) -> Tensor:
    """Self-attention of packed sequences: qkv [N, 3, H, hd] → [N, H, hd].

    Each token attends to the tokens of its own sequence only. ``varlen`` needs bf16/fp16
    activations and no attention dropout (the kernel has none); otherwise the padded core
    below runs, exactly, through SDPA.
    """
    if layout.impl == "varlen" and qkv.dtype in (torch.bfloat16, torch.float16) and not dropout_p:
        from torch.nn.attention.varlen import varlen_attn

        q, k, v = qkv.unbind(1)
        cu, longest = layout.cu_seqlens, layout.max_seqlen
        return varlen_attn(q, k, v, cu, cu, longest, longest)
    return _padded_core(qkv, layout, dropout_p)


def _padded_core(qkv: Tensor, layout: PackedSequences, dropout_p: float) -> Tensor:
    """Scatter q, k, v into [S, H, T_max, hd], attend with the key mask, gather back.

    The scatter writes each token straight into its (sequence, head, position) slots, so q,
    k and v come out contiguous and the result is read back by the same index: no transpose
    copies on either side (measured 20 % faster than scattering rows then permuting).
    """
    sequences, longest = layout.num_sequences, layout.max_seqlen
    tokens, _, heads, head_dim = qkv.shape
    if layout.uniform:
        buffer = qkv.view(sequences, longest, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
        key_mask = None
    else:
        buffer = qkv.new_zeros(3, sequences, heads, longest, head_dim)
        buffer[:, layout.token_sequence, :, layout.token_position, :] = qkv
        key_mask = layout.key_mask
    q, k, v = buffer.unbind(0)
    if layout.impl == "math" or (layout.impl == "varlen" and qkv.device.type == "cpu"):
        out = _math_attention(q, k, v, key_mask, dropout_p)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask, dropout_p=dropout_p)
    if layout.uniform:
        return out.transpose(1, 2).reshape(tokens, heads, head_dim)
    return out[layout.token_sequence, :, layout.token_position, :]


def _math_attention(
    q: Tensor, k: Tensor, v: Tensor, key_mask: Tensor | None, dropout_p: float
) -> Tensor:
    """softmax(q kᵀ / √hd + mask) v with explicit matmuls: on CPU, at SCOPE lengths, faster
    than SDPA's fused CPU kernel forward and backward (measured, see the module doc)."""
    scores = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask, float("-inf"))
    weights = scores.softmax(dim=-1)
    if dropout_p:
        weights = dropout(weights, dropout_p, training=True)
    return torch.matmul(weights, v)


class _Scatter(torch.autograd.Function):
    """Rows of x into a zero buffer at unique ``slots``; the gradient is a plain gather
    (autograd's own, for ``index_put``, accumulates, which unique slots never need)."""

    @staticmethod
    def forward(ctx, x: Tensor, slots: Tensor, rows: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(slots)
        return x.new_zeros((rows, *x.shape[1:])).index_copy_(0, slots, x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None]:  # type: ignore[override]
        (slots,) = ctx.saved_tensors
        return grad.index_select(0, slots), None, None


@dataclass(frozen=True)
class Unpadding:
    """How a padded [B, T] batch maps onto its packed tokens, and back."""

    indices: Tensor
    """[N] long: each real token's flat position in the [B * T] batch, row-major."""
    batch: int
    seq_len: int

    def pack(self, values: Tensor) -> Tensor:
        """[B, T, ...] → [N, ...] (the real tokens)."""
        return values.reshape(self.batch * self.seq_len, *values.shape[2:])[self.indices]

    def pad(self, packed: Tensor) -> Tensor:
        """[N, ...] → [B, T, ...], zeros on the padding."""
        rows = self.batch * self.seq_len
        full = _Scatter.apply(packed, self.indices, rows)
        return full.view(self.batch, self.seq_len, *packed.shape[1:])


def unpad(attention_mask: Tensor) -> tuple[Unpadding, Tensor, Tensor]:
    """(the Unpadding, [B] lengths, [N] positions) of a [B, T] 1/0 mask.

    Positions are the column indices, as the padded model numbers them, so a right-padded
    batch gets 0..len-1 and the packed result equals the padded one.
    """
    mask = attention_mask.bool()
    batch, seq_len = mask.shape
    indices = mask.flatten().nonzero().squeeze(1)
    positions = indices % seq_len
    return Unpadding(indices, batch, seq_len), mask.sum(dim=1), positions
