"""GPT-2's final block at the last token only: the fast path that training (from cached trunk states),
prediction and the ONNX graph share.

The logits are read at one token per message, and in the final block a token's output depends on the other
tokens only through their keys and values. So keys and values are computed for every token, while the
query, the attention, `c_proj` and the MLP (5/6 of the block's arithmetic) run for one token per message.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hf_spam.models.pooling import last_token_index


def last_block_at_ends(block: nn.Module, hidden_states: torch.Tensor, ends: torch.Tensor) -> torch.Tensor:
    """A GPT-2 block's output at the last token of each packed message only: `[messages, n_embd]`.

    The loss reads nothing but the last token's logits, and in the final block a token's output depends on
    the other tokens only through their keys and values. So keys and values are computed for every token,
    while the query, the attention, `c_proj` and the MLP (5/6 of the block's arithmetic) run for one token
    per message. The same computation as `block(...)` followed by picking the last tokens, up to rounding.
    """
    attn, ln_1 = block.attn, block.ln_1
    hidden = hidden_states.reshape(-1, hidden_states.shape[-1])  # the packed row: [tokens, n_embd]
    weight, bias = attn.c_attn.weight, attn.c_attn.bias  # Conv1D: x @ weight + bias, columns [query|key|value]
    if torch.is_grad_enabled() and not hidden.requires_grad:  # training from cached trunk states
        normed = F.layer_norm(hidden, ln_1.normalized_shape, eps=ln_1.eps)
        query, key_value = _QueryAtEndsKeyValue.apply(normed, ends, ln_1.weight, ln_1.bias, weight, bias)
    else:
        query_weight, query_bias, kv_weight, kv_bias = split_c_attn(block)
        key_value = torch.addmm(kv_bias, ln_1(hidden), kv_weight)
        query = torch.addmm(query_bias, ln_1(hidden[ends]), query_weight)
    # Gather each message's keys and values into a padded [messages, width] grid; the pads are masked.
    starts = torch.cat([ends.new_zeros(1), ends[:-1] + 1])
    lengths = ends - starts + 1
    offsets = torch.arange(int(lengths.max()), device=ends.device)
    valid = offsets < lengths[:, None]
    index = torch.where(valid, starts[:, None] + offsets, ends[:, None])
    return _final_block_at_queries(block, hidden[ends], query, key_value[index], valid)


def split_c_attn(block: nn.Module) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A GPT-2 block's `c_attn` as (query weight, query bias, key-value weight, key-value bias)."""
    weight, bias, dim = block.attn.c_attn.weight, block.attn.c_attn.bias, block.attn.embed_dim
    return weight[:, :dim], bias[:dim], weight[:, dim:], bias[dim:]


def last_block_at_last_tokens(
    block: nn.Module, hidden_states: torch.Tensor, attention_mask: torch.Tensor, c_attn: tuple | None = None
) -> torch.Tensor:
    """`last_block_at_ends` for right-padded rows `[messages, length, n_embd]`: the block's output at each
    row's last real token, `[messages, n_embd]`, with fixed-rank tensor operations only (what the ONNX export
    of GPT-2 traces). `c_attn`: `split_c_attn(block)`, or those four tensors held as constants of their own
    (an ONNX graph's int8 quantization converts a weight that is a constant, not a slice taken at run time)."""
    ln_1 = block.ln_1
    query_weight, query_bias, kv_weight, kv_bias = c_attn if c_attn is not None else split_c_attn(block)
    at_last = hidden_states[torch.arange(hidden_states.shape[0]), last_token_index(attention_mask)]
    key_value = torch.matmul(ln_1(hidden_states), kv_weight) + kv_bias
    query = torch.addmm(query_bias, ln_1(at_last), query_weight)
    return _final_block_at_queries(block, at_last, query, key_value, attention_mask.bool())


def _final_block_at_queries(block, residual, query, key_value, valid) -> torch.Tensor:
    """The rest of a GPT-2 block for one query per message: attention over the message's keys and values
    (`key_value` `[messages, width, 2 * n_embd]`, `valid` marks its real tokens), `c_proj`, residuals, MLP."""
    attn = block.attn
    dim, heads, head_dim = attn.embed_dim, attn.num_heads, attn.head_dim
    n_messages, width = valid.shape
    key, value = key_value.reshape(n_messages, width, 2, heads, head_dim).permute(2, 0, 3, 1, 4)
    context = F.scaled_dot_product_attention(
        query.view(n_messages, heads, 1, head_dim),
        key,
        value,
        attn_mask=valid[:, None, None, :],
        dropout_p=attn.attn_dropout.p if attn.training else 0.0,
        scale=attn.scaling,
    )
    out = residual + attn.resid_dropout(attn.c_proj(context.reshape(n_messages, dim)))
    return out + block.mlp(block.ln_2(out))


class _QueryAtEndsKeyValue(torch.autograd.Function):
    """`c_attn(ln_1(hidden))` of the final block when `hidden` is a constant (cached trunk states): the query
    at the `ends` only, keys and values for every token. Takes `normed`, `hidden` layer-normed without affine.

    Autograd would form the gradient of `ln_1`'s output for every token, a second `[tokens, n_embd]` matrix
    product, only to reduce it to `ln_1`'s two vectors, and would build the weight's gradient from two zero-filled
    full-size pieces, one per column slice. With `x = normed * gamma + beta`, `g` the gradient of the keys and
    values, `M = normed^T @ g` and `s = g.sum(0)`, their part of the gradients is `d weight = gamma[:, None] * M
    + outer(beta, s)`, `d bias = s`, `d gamma = (M * weight).sum(1)`, `d beta = weight @ s`: one product, written
    straight into the weight's gradient beside the query's columns.
    """

    @staticmethod
    def forward(ctx, normed, ends, gamma, beta, weight, bias):
        dim = weight.shape[1] // 3
        normed_ends = normed[ends]
        x_ends = torch.addcmul(beta, normed_ends, gamma)
        query = torch.addmm(bias[:dim], x_ends, weight[:, :dim])
        key_value = torch.addmm(bias[dim:], torch.addcmul(beta, normed, gamma), weight[:, dim:])
        ctx.save_for_backward(normed, normed_ends, x_ends, gamma, beta, weight)
        return query, key_value

    @staticmethod
    def backward(ctx, grad_query, grad_key_value):
        normed, normed_ends, x_ends, gamma, beta, weight = ctx.saved_tensors
        dim = grad_query.shape[1]
        products = normed.t() @ grad_key_value
        sums = grad_key_value.sum(0)
        grad_weight = torch.empty_like(weight)
        torch.mm(x_ends.t(), grad_query, out=grad_weight[:, :dim])
        torch.addr(gamma[:, None] * products, beta, sums, out=grad_weight[:, dim:])
        grad_bias = torch.cat([grad_query.sum(0), sums])
        grad_x_ends = grad_query @ weight[:, :dim].t()  # [messages, n_embd]: the query's share of ln_1's gradients
        grad_gamma = (products * weight[:, dim:]).sum(1) + (grad_x_ends * normed_ends).sum(0)
        grad_beta = weight[:, dim:] @ sums + grad_x_ends.sum(0)
        return None, None, grad_gamma, grad_beta, grad_weight, grad_bias
