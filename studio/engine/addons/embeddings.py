"""Textual-inversion embeddings (``load_embeddings``): A1111 ``.pt`` (``string_to_param``), ``.safetensors``
(``emb_params``), diffusers (``{token: tensor}``) and SDXL (``clip_l`` + ``clip_g``) files; the keyword is the file's
stem."""

from __future__ import annotations

import contextlib
import re
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...core.errors import ModelError, first_line
from ..weights import file_key, read_tensors
from .common import base_label, model_base, quiet

_EMBEDDINGS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # tokenizer -> {keyword.lower(): LoadedEmbedding}


def embedding_vectors(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """An embedding file's vectors, (n, width) float tensors, by encoder: {"": t} or SDXL {"clip_l", "clip_g"}."""
    import torch

    def as_matrix(v: Any, what: str):
        if not isinstance(v, torch.Tensor) or not v.is_floating_point() or v.ndim not in (1, 2) or v.numel() == 0:
            raise ModelError(f"{name} is not a textual-inversion embedding ({what} is not a list of vectors)")
        return (v if v.ndim == 2 else v.unsqueeze(0)).detach().to(torch.float32)

    if "clip_l" in data and "clip_g" in data:
        return {"clip_l": as_matrix(data["clip_l"], "clip_l"), "clip_g": as_matrix(data["clip_g"], "clip_g")}
    if "string_to_param" in data:  # A1111 .pt (a dict, or the original textual_inversion's ParameterDict)
        params = dict(data["string_to_param"].items()) if hasattr(data["string_to_param"], "items") else {}
        if params:
            value = params.get("*", next(iter(params.values())))
            return {"": as_matrix(value, "string_to_param")}
        raise ModelError(f"{name} is not a textual-inversion embedding (its string_to_param is empty)")
    if "emb_params" in data:  # A1111 .safetensors
        return {"": as_matrix(data["emb_params"], "emb_params")}
    tensors = {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
    if len(tensors) == 1:  # diffusers: {token: tensor}
        ((k, v),) = tensors.items()
        return {"": as_matrix(v, k)}
    sample = ", ".join(list(data)[:3]) or "nothing"
    raise ModelError(f"{name} is not a textual-inversion embedding (it holds {sample})")


def _width_base(width: int) -> str:
    return {768: "SD 1.x", 1024: "SD 2.x", 1280: "SDXL"}.get(width, "")


def _encoders(pipe) -> dict[str, tuple[Any, Any]]:
    """Which vectors go where: "" (SD 1.x/2.x) or "clip_l" + "clip_g" (SDXL) -> (text encoder, tokenizer)."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return {"clip_l": (pipe.text_encoder, pipe.tokenizer), "clip_g": (pipe.text_encoder_2, pipe.tokenizer_2)}
    if getattr(pipe, "text_encoder", None) is None or getattr(pipe, "tokenizer", None) is None:
        raise ModelError("This model has no text encoder: embeddings cannot be used with it")
    return {"": (pipe.text_encoder, pipe.tokenizer)}


def _check_embedding(pipe, vectors: dict[str, Any], name: str) -> None:
    base = model_base(pipe)
    encoders = _encoders(pipe)
    if set(vectors) != set(encoders):
        if "clip_g" in vectors:
            raise ModelError(f"{name} is an embedding for SDXL; the loaded model is {base_label(base)}")
        width = vectors[""].shape[1]
        made = _width_base(width) or f"a {width}-wide text encoder"
        raise ModelError(f"{name} is an embedding for {made}; the loaded model is SDXL")
    for enc, tensor in vectors.items():
        text_encoder, _tok = encoders[enc]
        want = text_encoder.get_input_embeddings().weight.shape[1]
        have = tensor.shape[1]
        if have != want:
            made = f" (made for {_width_base(have)})" if _width_base(have) else ""
            which = f" {enc}" if enc else ""
            raise ModelError(
                f"{name}{which} has vectors of width {have}{made}; the loaded model's text encoder takes width {want}"
            )


@dataclass(frozen=True)
class LoadedEmbedding:
    keyword: str  # the file's stem, as written in prompts
    token: str  # the tokenizer's token (+ token_1, token_2... for more vectors)
    vectors: int
    key: tuple[str, int, int]  # the file version


def _free(token: str, tokenizers: Iterable[Any]) -> bool:
    # convert_tokens_to_ids, not get_vocab(): that builds a 49k-entry dict holding the GIL (16 ms a call).
    def known(t, tok: str) -> bool:
        tid = t.convert_tokens_to_ids(tok)
        return tid is not None and (tid != t.unk_token_id or tok == t.unk_token)

    return all(not known(t, token) and not known(t, f"{token}_1") for t in tokenizers)


def load_embeddings(pipe, paths: Iterable[str | Path]) -> list[str]:
    """Load textual-inversion embeddings into the pipeline's tokenizer(s) and text encoder(s); their keywords.

    The keyword is the file's stem (A1111's convention). Its token is the keyword in lower case (CLIP lower-cases
    prompts; a mixed-case token would never match); a keyword that is already a piece of CLIP's vocabulary (say
    "wide", which "widescreen" is made of) gets the token ``<wide>`` instead, so that no vocabulary vector is
    overwritten. Pass prompts through ``prompt_with_embeddings`` so that keywords in any case, and those, reach
    their tokens. Idempotent: a keyword already loaded from the same file version is skipped. All files are read
    and checked before any is loaded, so a refused one (ModelError) leaves the pipeline as it was.
    """
    todo: list[LoadedEmbedding] = []
    vectors_of: dict[str, dict[str, Any]] = {}
    keywords: list[str] = []
    encoders = _encoders(pipe)
    tokenizers = [tok for _te, tok in encoders.values()]
    for path in paths:
        p = Path(path)
        key = file_key(p, "embedding")
        keyword = p.stem
        keywords.append(keyword)
        if any(e.keyword.lower() == keyword.lower() for e in todo):
            raise ModelError(f"Two embeddings are named {keyword}: rename one of the files")
        done = [_EMBEDDINGS.get(tok, {}).get(keyword.lower()) for tok in tokenizers]
        if all(d is not None and d.key == key for d in done):
            continue  # already loaded, the same file version
        if any(d is not None for d in done):
            raise ModelError(
                f"An embedding named {keyword} is already loaded from another file (or an older version of "
                f"{p.name}); reload the model to use this one"
            )
        import torch

        data, _meta = read_tensors(p, "embedding", allow=(torch.nn.ParameterDict,))
        vectors = embedding_vectors(data, p.name)
        _check_embedding(pipe, vectors, p.name)
        token = next((t for t in (keyword.lower(), f"<{keyword.lower()}>") if _free(t, tokenizers)), None)
        if token is None or not keyword.strip() or any(c.isspace() for c in keyword):
            raise ModelError(f"{p.name}: {keyword!r} cannot be used as a keyword; rename the file")
        count = next(iter(vectors.values())).shape[0]
        todo.append(LoadedEmbedding(keyword, token, count, key))
        vectors_of[keyword] = vectors
    for emb in todo:
        loaded: list[tuple[Any, Any]] = []
        try:
            with quiet():
                for enc, (text_encoder, tokenizer) in encoders.items():
                    pipe.load_textual_inversion(
                        vectors_of[emb.keyword][enc], token=emb.token, text_encoder=text_encoder, tokenizer=tokenizer
                    )
                    loaded.append((text_encoder, tokenizer))
        except Exception as e:  # noqa: BLE001 - roll back the encoders already done (SDXL), then one line
            for text_encoder, tokenizer in loaded:
                with contextlib.suppress(Exception):
                    pipe.unload_textual_inversion(emb.token, tokenizer=tokenizer, text_encoder=text_encoder)
            raise ModelError(f"Cannot use embedding {emb.keyword}: {first_line(e)}") from e
        for tokenizer in tokenizers:
            _EMBEDDINGS.setdefault(tokenizer, {})[emb.keyword.lower()] = emb
    return keywords


def loaded_embeddings(pipe) -> list[LoadedEmbedding]:
    """The embeddings load_embeddings put into this pipeline's (first) tokenizer, by keyword."""
    tok = getattr(pipe, "tokenizer", None)
    found = _EMBEDDINGS.get(tok, {}) if tok is not None else {}
    return [found[k] for k in sorted(found)]


def prompt_with_embeddings(pipe, prompt: str) -> str:
    """The prompt with every loaded keyword, as a whole word in any case, replaced by its token.

    diffusers then expands a token to its vectors (``tok tok_1 ...``) inside the pipeline; that expansion is
    case-sensitive, and a keyword that collided with CLIP's vocabulary has a token of its own, hence this step.
    A keyword inside a longer word is left alone (A1111 matches whole tokens too).
    """
    for emb in loaded_embeddings(pipe):
        pattern = r"(?<![0-9A-Za-z_])" + re.escape(emb.keyword) + r"(?![0-9A-Za-z_])"
        prompt = re.sub(pattern, lambda _m, t=emb.token: t, prompt, flags=re.IGNORECASE)
    return prompt
