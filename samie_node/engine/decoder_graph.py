"""LiteMedSAM's box decoder rearranged for a CPU: the same weights and the same function, less work per box.

Segment Anything's mask decoder copies the image embedding once per box and then projects all of its
4096 positions (queries, keys, values, output) in every cross attention, although each box brings only
seven tokens. Two exact rewrites of the algebra move that work to the token side:

token-to-image attention
    ``softmax(q_h (W_k,h x + b_k,h)^T)`` equals ``softmax((q_h W_k,h) x^T)`` (the bias adds a constant to
    each row, which softmax ignores), and ``A (W_v,h x + b_v,h)`` equals ``(A x) W_v,h^T + b_v,h`` (each row
    of ``A`` sums to one). The seven queries are carried into the image's channel space instead of the 4096
    positions into the heads' space.
image-to-token attention
    The scores ``(W_q,h x + b_q,h) k_h^T`` become ``x (W_q,h^T k_h^T) + b_q,h k_h^T``, and the output
    projection is applied to the seven values before the attention weights mix them.

output upscaling
    Both transposed convolutions have kernel 2 and stride 2: each input position makes its own 2 x 2 block
    of outputs, so each is one matrix product of the positions' channel rows (``x W``, W's columns ordered
    block position first, channel last), computed on the (box, position, channel) rows the attention
    leaves, channels last. The layer norm, the GELUs and the hypernetwork's dot product work on the
    channels of a row too; only the (box, 256, 256) mask logits are put in image order at the end. The
    original order transposes every box's 64 x 64 x 256 positions to channels-first and the 32-channel
    256 x 256 maps back, the largest memory traffic of the decoder.

Before the first attention block every box sees the same image positions, so they stay one copy (batch 1,
broadcast against the boxes) until the first image-to-token attention makes them differ. Only the first
mask token's output is computed (one mask per box). Numerically the result differs from the original
order by float rounding only; :mod:`samie_node.engine.runtime_openvino` exports this module and the tests
and ``bench/inference.py`` compare its masks with the reference decoder's.
"""

from __future__ import annotations

import math

import torch
from segment_anything.modeling import Sam
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention, TwoWayAttentionBlock


def _token_to_image(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attention(q, k, v)`` for a few queries ``q`` (B, T, C) over many positions ``k``, ``v`` (B or 1, N, C)."""
    heads = attention.num_heads
    batch, tokens, channels = q.shape
    per_head = attention.internal_dim // heads
    query = attention.q_proj(q).reshape(batch, tokens, heads, per_head)
    key_weight = attention.k_proj.weight.reshape(heads, per_head, channels)
    folded = torch.einsum("bthd,hdc->bhtc", query, key_weight) / math.sqrt(per_head)
    # The positions as the rows of the product, then transposed: the same scores, and OpenVINO's CPU kernels
    # run this order faster than the transposed positions as its columns (bench/inference.py's box decoder).
    scores = (k @ folded.reshape(batch, heads * tokens, channels).transpose(1, 2)).transpose(1, 2)
    weights = torch.softmax(scores.reshape(batch, heads, tokens, -1), dim=-1)
    mixed = (weights.reshape(batch, heads * tokens, -1) @ v).reshape(batch, heads, tokens, channels)
    value_weight = attention.v_proj.weight.reshape(heads, per_head, channels)
    out = torch.einsum("bhtc,hdc->bthd", mixed, value_weight) + attention.v_proj.bias.reshape(heads, per_head)
    result: torch.Tensor = attention.out_proj(out.reshape(batch, tokens, heads * per_head))
    return result


def _image_to_token(attention: Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``attention(q, k, v)`` for many positions ``q`` (B or 1, N, C) over a few tokens ``k``, ``v`` (B, T, C)."""
    heads = attention.num_heads
    batch, tokens, channels = k.shape
    per_head = attention.internal_dim // heads
    key = attention.k_proj(k).reshape(batch, tokens, heads, per_head)
    value = attention.v_proj(v).reshape(batch, tokens, heads, per_head)
    query_weight = attention.q_proj.weight.reshape(heads, per_head, channels)
    scale = math.sqrt(per_head)
    folded = torch.einsum("bthd,hdc->bcht", key, query_weight).reshape(batch, channels, heads * tokens) / scale
    bias = torch.einsum("bthd,hd->bht", key, attention.q_proj.bias.reshape(heads, per_head)) / scale
    scores = q @ folded + bias.reshape(batch, 1, heads * tokens)
    weights = torch.softmax(scores.reshape(scores.shape[0], -1, heads, tokens), dim=-1)
    out_weight = attention.out_proj.weight.reshape(channels, heads, per_head)
    projected = torch.einsum("bthd,chd->bhtc", value, out_weight).reshape(batch, heads * tokens, channels)
    result: torch.Tensor = weights.reshape(weights.shape[0], -1, heads * tokens) @ projected + attention.out_proj.bias
    return result


def _block(
    block: TwoWayAttentionBlock, queries: torch.Tensor, keys: torch.Tensor, query_pe: torch.Tensor, key_pe: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``TwoWayAttentionBlock.forward`` with the two cross attentions rewritten."""
    if block.skip_first_layer_pe:
        queries = block.self_attn(q=queries, k=queries, v=queries)
    else:
        q = queries + query_pe
        queries = queries + block.self_attn(q=q, k=q, v=queries)
    queries = block.norm1(queries)
    attn_out = _token_to_image(block.cross_attn_token_to_image, queries + query_pe, keys + key_pe, keys)
    queries = block.norm2(queries + attn_out)
    queries = block.norm3(queries + block.mlp(queries))
    attn_out = _image_to_token(block.cross_attn_image_to_token, keys + key_pe, queries + query_pe, queries)
    keys = block.norm4(keys + attn_out)
    return queries, keys


def _upscaled_masks(
    decoder: MaskDecoder, keys: torch.Tensor, hyper: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """``output_upscaling`` of the (K, h*w, C) ``keys`` and its dot product with (K, C/8) ``hyper``, channels
    last (see the module notes); (K, 1, 4h, 4w) mask logits."""
    first, norm, first_act, second, second_act = decoder.output_upscaling
    count, positions, channels = keys.shape
    mid, last = first.weight.shape[1], second.weight.shape[1]
    # (C_in, C_out, i, j) -> (C_in, (i, j, C_out)): one row of the product is one position's 2 x 2 block.
    x = keys @ first.weight.permute(0, 2, 3, 1).reshape(channels, 4 * mid) + first.bias.repeat(4)
    x = x.reshape(count, positions * 4, mid)
    mean = x.mean(-1, keepdim=True)
    variance = (x - mean).pow(2).mean(-1, keepdim=True)
    x = first_act((x - mean) / torch.sqrt(variance + norm.eps) * norm.weight + norm.bias)
    x = second_act(x @ second.weight.permute(0, 2, 3, 1).reshape(mid, 4 * last) + second.bias.repeat(4))
    x = x.reshape(count, positions * 16, last)
    masks = x @ hyper.unsqueeze(-1)
    # rows are (y, x, i, j, i2, j2): output row 4y + 2i + i2, column 4x + 2j + j2.
    height, width = size
    masks = masks.reshape(count, height, width, 2, 2, 2, 2).permute(0, 1, 3, 5, 2, 4, 6)
    result: torch.Tensor = masks.reshape(count, 1, 4 * height, 4 * width)
    return result


class FoldedBoxDecoder(torch.nn.Module):
    """:class:`samie_node.engine.sam.BoxDecoder`'s function, computed as the module notes describe."""

    def __init__(self, model: Sam) -> None:
        super().__init__()
        self.prompt_encoder = model.prompt_encoder
        self.mask_decoder = model.mask_decoder

    def forward(self, features: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(1, C, h, w) embedding and (K, 4) boxes to (K, 1, 4h, 4w) mask logits and (K, 1) predicted IoUs."""
        decoder, prompts = self.mask_decoder, self.prompt_encoder
        sparse, _ = prompts(points=None, boxes=boxes, masks=None)
        output_tokens = torch.cat([decoder.iou_token.weight, decoder.mask_tokens.weight], dim=0)
        tokens = torch.cat((output_tokens.unsqueeze(0).expand(sparse.shape[0], -1, -1), sparse), dim=1)
        _, _, height, width = features.shape
        src = features + prompts.no_mask_embed.weight.reshape(1, -1, 1, 1)  # the dense prompt without a mask
        keys = src.flatten(2).permute(0, 2, 1)
        key_pe = prompts.get_dense_pe().flatten(2).permute(0, 2, 1)
        transformer = decoder.transformer
        queries = tokens
        for block in transformer.layers:
            queries, keys = _block(block, queries, keys, tokens, key_pe)
        attn_out = _token_to_image(transformer.final_attn_token_to_image, queries + tokens, keys + key_pe, keys)
        queries = transformer.norm_final_attn(queries + attn_out)
        hyper = decoder.output_hypernetworks_mlps[0](queries[:, 1, :])
        masks = _upscaled_masks(decoder, keys, hyper, (height, width))
        iou = decoder.iou_prediction_head(queries[:, 0, :])[:, :1]
        return masks, iou
