"""A1111-style conditioning tensors for diffusers SD / SDXL pipelines: weights, BREAK, prompts of any length.

`encode(pipe, prompt, negative)` returns the keyword arguments for the pipeline call (`prompt_embeds`,
`negative_prompt_embeds`, for SDXL also the pooled pair), built as AUTOMATIC1111's
`FrozenCLIPEmbedderWithCustomWordsBase` does with emphasis "Original":

- the prompt is parsed by `prompts.parse_prompt_attention`, each run tokenized on its own (after the pipeline's
  `maybe_convert_prompt`, so a multi-vector textual inversion "name" becomes "name name_1 ..."), laid into chunks
  of 75 tokens (`prompts.split_chunks`: comma backtracking, BREAK); each chunk gets the start/end tokens and the
  tokenizer's padding, is encoded alone, and the chunks are concatenated along the sequence axis;
- in each chunk every token's vector is multiplied by its weight, then the chunk is rescaled so its mean is the
  unweighted one (a chunk with all weights 1 is left as it is, bit for bit);
- positive and negative get the same number of chunks: the shorter is padded with encoded empty chunks, as A1111's
  `pad_cond_uncond` (A1111 by default runs two U-Net passes instead; one batched call needs equal lengths);
- SD: clip skip 1 is the last layer, n > 1 is `hidden_states[-n]` through the final layer norm, for the negative
  too (diffusers applies clip skip to the positive only);
- SDXL: per chunk the penultimate hidden states of both encoders (no final layer norm), each weighted and rescaled
  on its own, concatenated on the feature axis; the pooled embeds are text_encoder_2's projection of the first
  chunk, unweighted; an empty negative with `force_zeros_for_empty_prompt` is zeros, pooled too. Clip skip is not
  applied to SDXL, as A1111 by default (its `sdxl_clip_l_skip` is off); SD 2 does get it (A1111 ignores it there).

Extra-network tags (`<lora:...>`) left in the text are removed first (`prompts.extract_loras`); applying the
LoRAs, text-encoder ones included, before calling `encode` is the caller's part.
"""

from __future__ import annotations

import torch

from ..core.prompts import BREAK, CHUNK_LENGTH, extract_loras, parse_prompt_attention, split_chunks

Chunk = tuple[list[int], list[float]]


def _module_device(module) -> torch.device:
    try:
        from diffusers.utils.torch_utils import get_module_execution_device
    except ImportError:  # older diffusers
        return module.device
    return get_module_execution_device(module)


def _final_layer_norm(text_encoder):
    """CLIP's final layer norm: `text_model.final_layer_norm` up to transformers 4, on the model itself in 5
    (where diffusers 0.42's own clip_skip path fails for the want of `text_model`)."""
    return getattr(text_encoder, "text_model", text_encoder).final_layer_norm


def _encoders(pipe) -> list[tuple[object, object]]:
    pairs = [
        (getattr(pipe, "tokenizer", None), getattr(pipe, "text_encoder", None)),
        (getattr(pipe, "tokenizer_2", None), getattr(pipe, "text_encoder_2", None)),
    ]
    pairs = [(tok, enc) for tok, enc in pairs if tok is not None and enc is not None]
    if not pairs:
        raise ValueError(f"{type(pipe).__name__} has no tokenizer and text encoder to encode a prompt with")
    return pairs


def _units(ids: list[int], tokenizer, multi: set[int]) -> list[list[int]]:
    """Group a multi-vector textual inversion ("name", "name_1", ...) into one unit, as A1111 keeps an embedding
    in one chunk; every other token is a unit of its own."""
    if not multi.intersection(ids):
        return [[i] for i in ids]
    units: list[list[int]] = []
    pos = 0
    while pos < len(ids):
        unit = [ids[pos]]
        if ids[pos] in multi:
            name = tokenizer.convert_ids_to_tokens(ids[pos])
            while pos + len(unit) < len(ids) and tokenizer.convert_ids_to_tokens(ids[pos + len(unit)]) == (
                f"{name}_{len(unit)}"
            ):
                unit.append(ids[pos + len(unit)])
        units.append(unit)
        pos += len(unit)
    return units


def _multi_vector_ids(tokenizer) -> set[int]:
    """Ids of added tokens that start a multi-vector embedding (a "name" with a "name_1" beside it)."""
    added = getattr(tokenizer, "added_tokens_encoder", {}) or {}
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return {i for tok, i in added.items() if i not in special and f"{tok}_1" in added}


def tokenize_chunks(pipe, tokenizer, text: str) -> list[Chunk]:
    """The chunks (token ids and multipliers, without start/end/padding) of one prompt for one tokenizer."""
    parsed = parse_prompt_attention(text)
    convert = getattr(pipe, "maybe_convert_prompt", None)
    texts = [frag for frag, w in parsed if (frag, w) != BREAK]
    multi = _multi_vector_ids(tokenizer)
    if convert is not None and multi:  # it changes nothing else (and its tokenize() warns on long texts)
        texts = [convert(t, tokenizer) for t in texts]
    ids = tokenizer(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"] if texts else []
    pieces = []
    it = iter(ids)
    for frag, w in parsed:
        if (frag, w) == BREAK:
            pieces.append(None)
        else:
            pieces.append((_units(list(next(it)), tokenizer, multi), w))
    return split_chunks(pieces, _comma_id(tokenizer))


def _comma_id(tokenizer) -> int | None:
    """The id of "," as a word end. Not get_vocab(): it builds a 49k-entry dict holding the GIL (16 ms a call,
    a stall of the window while the engine thread encodes)."""
    tid = tokenizer.convert_tokens_to_ids(",</w>")
    return None if tid is None or tid == tokenizer.unk_token_id else int(tid)


def _frame(chunk: Chunk, tokenizer) -> tuple[list[int], list[float]]:
    """Start token + the chunk + end tokens to 77; after the first end token, the tokenizer's pad token."""
    tokens, mults = chunk
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    fill = CHUNK_LENGTH + 1 - len(tokens)
    ids = [bos, *tokens] + [eos] * fill
    first_end = ids.index(eos, 1)
    ids[first_end + 1 :] = [pad] * (len(ids) - first_end - 1)
    return ids, [1.0, *mults] + [1.0] * fill


def _apply_emphasis(z: torch.Tensor, mults: torch.Tensor) -> torch.Tensor:
    """A1111's "Original" emphasis per chunk: z * weights, rescaled to the unweighted mean."""
    out = z.clone()
    for i in range(z.shape[0]):
        if bool((mults[i] == 1.0).all()):
            continue
        zf = z[i].float()
        original_mean = zf.mean()
        weighted = zf * mults[i].to(zf.device, torch.float32)[:, None]
        new_mean = weighted.mean()
        # a chunk whose mean is next to nothing (a LayerNorm without bias) has no mean to keep: rescaling by
        # the ratio of two roundoff errors would zero or blow up every vector
        tiny = 1e-4 * float(zf.abs().mean())
        if abs(float(new_mean)) > tiny and abs(float(original_mean)) > tiny:
            weighted = weighted * (original_mean / new_mean)
        out[i] = weighted.to(z.dtype)
    return out


def _encode_chunks(tokenizer, text_encoder, chunks: list[Chunk], *, clip_skip: int, sdxl: bool):
    """Encode framed chunks in one batch; returns (hidden states [1, n*77, C], pooled [1, D] of chunk 0 or None)."""
    framed = [_frame(c, tokenizer) for c in chunks]
    dev = _module_device(text_encoder)
    ids = torch.tensor([f[0] for f in framed], dtype=torch.long, device=dev)
    mults = torch.tensor([f[1] for f in framed], dtype=torch.float32)
    out = text_encoder(ids, output_hidden_states=True)
    pooled = out[0][:1] if out[0].ndim == 2 else None
    if sdxl:
        z = out.hidden_states[-2]
    elif clip_skip <= 1:
        z = out.last_hidden_state
    else:
        z = out.hidden_states[-min(clip_skip, len(out.hidden_states))]
        z = _final_layer_norm(text_encoder)(z)
    z = _apply_emphasis(z, mults)
    return z.reshape(1, -1, z.shape[-1]), pooled


def encode(pipe, prompt: str, negative: str, *, clip_skip: int = 1, device=None) -> dict[str, torch.Tensor]:
    """Conditioning kwargs for `pipe(...)` from A1111-syntax prompts; see the module docstring.

    Returns `prompt_embeds` and `negative_prompt_embeds` ([1, 77 * chunks, C], equal lengths), and for an SDXL
    pipeline `pooled_prompt_embeds` and `negative_pooled_prompt_embeds` ([1, D]); on `device` (default the
    pipeline's execution device), in the text encoder's dtype (text_encoder_2's for SDXL).
    """
    if clip_skip < 1:
        raise ValueError(f"clip_skip must be 1 or more, got {clip_skip}")
    prompt = extract_loras(prompt or "")[0]
    negative = extract_loras(negative or "")[0]
    if device is None:
        device = pipe._execution_device
    encoders = _encoders(pipe)
    sdxl = getattr(pipe, "text_encoder_2", None) is not None
    zero_negative = sdxl and negative == "" and bool(getattr(pipe.config, "force_zeros_for_empty_prompt", False))
    texts = [prompt] if zero_negative else [prompt, negative]

    chunked = [[tokenize_chunks(pipe, tok, t) for t in texts] for tok, _ in encoders]
    count = max(len(c) for per_encoder in chunked for c in per_encoder)
    for per_encoder in chunked:
        for c in per_encoder:
            c.extend(([], []) for _ in range(count - len(c)))

    embeds: list[list[torch.Tensor]] = [[] for _ in texts]
    pooled: list[torch.Tensor | None] = [None for _ in texts]
    with torch.no_grad():
        for (tok, enc), per_encoder in zip(encoders, chunked, strict=True):
            for i, chunks in enumerate(per_encoder):
                z, p = _encode_chunks(tok, enc, chunks, clip_skip=clip_skip, sdxl=sdxl)
                embeds[i].append(z.to(device))
                if pooled[i] is None and p is not None:
                    pooled[i] = p.to(device)

    dtype = (pipe.text_encoder_2 if sdxl else pipe.text_encoder).dtype
    result = [torch.cat(e, dim=-1).to(dtype=dtype) for e in embeds]
    kwargs = {"prompt_embeds": result[0]}
    if sdxl:
        if pooled[0] is None:
            raise ValueError(
                "the SDXL pipeline's text_encoder_2 gives no pooled projection (CLIPTextModelWithProjection)"
            )
        kwargs["pooled_prompt_embeds"] = pooled[0].to(dtype=dtype)
    if zero_negative:
        kwargs["negative_prompt_embeds"] = torch.zeros_like(kwargs["prompt_embeds"])
        kwargs["negative_pooled_prompt_embeds"] = torch.zeros_like(kwargs["pooled_prompt_embeds"])
    else:
        kwargs["negative_prompt_embeds"] = result[1]
        if sdxl:
            kwargs["negative_pooled_prompt_embeds"] = pooled[1].to(dtype=dtype)
    return kwargs
