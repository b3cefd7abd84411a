"""AUTOMATIC1111's prompt syntax, parsed: attention weights, BREAK, LoRA tags and the 75-token chunking (no torch).

Written by hand rather than with `compel`: compel's syntax is `word+` / `(words)1.1`, not A1111's `(words:1.1)` /
`[words]`, and compel down-weights (weight < 1) by blending with / masking out the term, not by scaling its vectors.

What the web UI does (modules/prompt_parser.py `parse_prompt_attention`, modules/extra_networks.py `parse_prompt`,
modules/sd_hijack_clip.py `tokenize_line`), reproduced here; `studio.engine.conditioning` turns the result into
tensors. Departures, all where A1111 misbehaves:

- A BREAK inside brackets still breaks (A1111 multiplies its -1 marker too and then encodes the word "break" with a
  negative weight); BREAK markers are never merged with a neighbour.
- A weight that the regex accepts but `float` does not, as in `(a:1.2.3)`, is left as plain text (A1111 raises).
- A `<lora:...>` weight that is not a number raises ValueError naming the tag (A1111 logs it and applies no LoRA).
- Brackets nested deeper than MAX_NESTING, or a weight beyond MAX_WEIGHT, are refused (RequestError naming the
  limit): A1111 multiplies on, 1.1 ** 5000 is inf, and the conditioning turns to NaN: a black image.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .errors import RequestError

ROUND_MULTIPLIER = 1.1
SQUARE_MULTIPLIER = 1 / 1.1
CHUNK_LENGTH = 75  # tokens of text per chunk; with the start and end tokens, CLIP's 77
COMMA_BACKTRACK = 20  # A1111's default `comma_padding_backtrack`
BREAK = ("BREAK", -1.0)  # the marker parse_prompt_attention puts where a chunk must end, as A1111 writes it
MAX_NESTING = 32  # brackets open at once: (((a))) 32 deep is x21, far past any useful emphasis
MAX_WEIGHT = 100.0  # |weight| of a run, nesting and explicit weights multiplied

# A1111's tokens, in its order: escapes, a lone backslash, openers, an explicit weight closing a round bracket,
# closers, a run of plain text, a lone colon.
_RE_ATTENTION = re.compile(
    r"""
\\\(|
\\\)|
\\\[|
\\]|
\\\\|
\\|
\(|
\[|
:\s*([+-]?[.\d]+)\s*\)|
\)|
]|
[^\\()\[\]:]+|
:
""",
    re.X,
)
_RE_BREAK = re.compile(r"\s*\bBREAK\b\s*", re.S)
_RE_EXTRA_NETWORK = re.compile(r"<(\w+):([^>]+)>")
LORA_KINDS = ("lora", "lyco")


def parse_prompt_attention(text: str) -> list[tuple[str, float]]:
    """Split a prompt into (text, weight) runs, as A1111's parser does (emphasis "Original").

    `(a)` x1.1, `((a))` x1.21, `[a]` /1.1, `(a:1.5)` x1.5, nesting multiplies; `\\(` `\\)` `\\[` `\\]` `\\\\` are
    the literal characters; a bracket left open applies to the end, a closer with no opener is text; adjacent runs
    of equal weight are merged; a `BREAK` word becomes the marker `BREAK` (("BREAK", -1.0)).

    >>> parse_prompt_attention("an (important) word")
    [('an ', 1.0), ('important', 1.1), (' word', 1.0)]
    """
    res: list[list] = []  # [text, weight, is_break]
    round_brackets: list[int] = []
    square_brackets: list[int] = []

    def multiply_range(start: int, multiplier: float) -> None:
        for item in res[start:]:
            if not item[2]:
                item[1] *= multiplier

    for m in _RE_ATTENTION.finditer(text):
        token = m.group(0)
        weight = m.group(1)
        if weight is not None:
            try:
                weight_value = float(weight)
            except ValueError:  # "1.2.3", ".": text (A1111 raises here)
                weight = None
        if token.startswith("\\"):
            res.append([token[1:], 1.0, False])
        elif token in ("(", "["):
            if len(round_brackets) + len(square_brackets) >= MAX_NESTING:
                raise RequestError(f"brackets nested more than {MAX_NESTING} deep (the limit); write \\( for a literal one")
            (round_brackets if token == "(" else square_brackets).append(len(res))
        elif weight is not None and round_brackets:
            multiply_range(round_brackets.pop(), weight_value)
        elif token == ")" and round_brackets:
            multiply_range(round_brackets.pop(), ROUND_MULTIPLIER)
        elif token == "]" and square_brackets:
            multiply_range(square_brackets.pop(), SQUARE_MULTIPLIER)
        else:
            for i, part in enumerate(_RE_BREAK.split(token)):
                if i > 0:
                    res.append([BREAK[0], BREAK[1], True])
                res.append([part, 1.0, False])

    for pos in round_brackets:
        multiply_range(pos, ROUND_MULTIPLIER)
    for pos in square_brackets:
        multiply_range(pos, SQUARE_MULTIPLIER)

    if not res:
        res = [["", 1.0, False]]
    for t, w, is_break in res:
        if not is_break and not (math.isfinite(w) and abs(w) <= MAX_WEIGHT):
            raise RequestError(f"{t.strip()[:30]!r} is weighted x{w:.3g}; the limit is x{MAX_WEIGHT:g}")

    i = 0
    while i + 1 < len(res):
        a, b = res[i], res[i + 1]
        if not a[2] and not b[2] and a[1] == b[1]:
            a[0] += b[0]
            res.pop(i + 1)
        else:
            i += 1
    return [(t, w) for t, w, _ in res]


def extract_loras(text: str) -> tuple[str, list[tuple[str, float]]]:
    """Remove the extra-network tags from a prompt; return the text and the (name, weight) of each LoRA.

    As A1111: every `<kind:args>` tag is removed (kinds other than lora/lyco are dropped, as A1111 skips an unknown
    extra network); the args are split on ":", `key=value` ones are named; the weight is the second positional one,
    else the named `te`, else 1.0: `<lora:name:0.8>` -> ("name", 0.8), `<lora:name>` -> ("name", 1.0).
    """
    loras: list[tuple[str, float]] = []

    def found(m: re.Match) -> str:
        kind, args = m.group(1), m.group(2)
        if kind.lower() not in LORA_KINDS:
            return ""
        positional: list[str] = []
        named: dict[str, str] = {}
        for item in args.split(":"):
            parts = item.split("=", 2)
            if len(parts) == 2:
                named[parts[0]] = parts[1]
            else:
                positional.append(item)
        if not positional:
            raise ValueError(f"no LoRA name in {m.group(0)!r}")
        raw = positional[1] if len(positional) > 1 else named.get("te", "1.0")
        try:
            weight = float(raw)
        except ValueError:
            raise ValueError(f"the LoRA weight {raw!r} in {m.group(0)!r} is not a number") from None
        loras.append((positional[0], weight))
        return ""

    return _RE_EXTRA_NETWORK.sub(found, text), loras


Unit = Sequence[int]  # one token id, or the ids of a multi-vector textual inversion, never split across chunks
Piece = tuple[Sequence[Unit], float]


def split_chunks(
    pieces: Sequence[Piece | None],
    comma_id: int | None,
    *,
    chunk_length: int = CHUNK_LENGTH,
    backtrack: int = COMMA_BACKTRACK,
) -> list[tuple[list[int], list[float]]]:
    """Lay weighted token runs into chunks of at most `chunk_length` tokens, as A1111's `tokenize_line`.

    `pieces`: per parsed run, its units (token-id sequences) and weight, or None for a BREAK (which always closes
    the current chunk, even an empty one). When a chunk is full and the last comma is at most `backtrack` tokens
    back, the tokens after that comma move on to the next chunk. Returns each chunk's token ids and multipliers,
    without the start/end tokens or padding; at least one (maybe empty) chunk.
    """
    chunks: list[tuple[list[int], list[float]]] = []
    tokens: list[int] = []
    mults: list[float] = []
    last_comma = -1

    def next_chunk() -> None:
        nonlocal tokens, mults, last_comma
        chunks.append((tokens, mults))
        tokens, mults, last_comma = [], [], -1

    for piece in pieces:
        if piece is None:
            next_chunk()
            continue
        units, weight = piece
        for unit in units:
            unit = list(unit)
            if comma_id is not None and unit[0] == comma_id:
                last_comma = len(tokens)
            elif (
                backtrack and len(tokens) == chunk_length and last_comma != -1 and len(tokens) - last_comma <= backtrack
            ):
                cut = last_comma + 1
                moved_tokens, moved_mults = tokens[cut:], mults[cut:]
                tokens, mults = tokens[:cut], mults[:cut]
                next_chunk()
                tokens, mults = moved_tokens, moved_mults
            if len(tokens) == chunk_length:
                next_chunk()
            if len(unit) > 1 and len(tokens) + len(unit) > chunk_length:
                next_chunk()
            tokens.extend(unit)
            mults.extend([weight] * len(unit))

    if tokens or not chunks:
        next_chunk()
    return chunks
