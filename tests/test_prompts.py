"""A1111 prompt syntax (studio.core.prompts) and its conditioning tensors (studio.engine.conditioning)."""

from __future__ import annotations

import pytest

from studio.core.prompts import BREAK, extract_loras, parse_prompt_attention, split_chunks

# --- parsing: A1111's own docstring examples, then the rest of its rules ---------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("normal text", [("normal text", 1.0)]),
        ("an (important) word", [("an ", 1.0), ("important", 1.1), (" word", 1.0)]),
        ("(unbalanced", [("unbalanced", 1.1)]),
        ("\\(literal\\]", [("(literal]", 1.0)]),
        ("(unnecessary)(parens)", [("unnecessaryparens", 1.1)]),
        (
            "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
            [
                ("a ", 1.0),
                ("house", 1.5730000000000004),
                (" ", 1.1),
                ("on", 1.0),
                (" a ", 1.1),
                ("hill", 0.55),
                (", sun, ", 1.1),
                ("sky", 1.4641000000000006),
                (".", 1.1),
            ],
        ),
    ],
)
def test_a1111_docstring_examples(text, expected):
    assert parse_prompt_attention(text) == expected


def _same_runs(got, expected):
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert [w for _, w in got] == pytest.approx([w for _, w in expected], rel=1e-12)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", [("", 1.0)]),
        ("((word))", [("word", 1.1 * 1.1)]),
        ("[word]", [("word", 1 / 1.1)]),
        ("[[word]]", [("word", 1 / 1.1 / 1.1)]),
        ("a (word:1.5) b", [("a ", 1.0), ("word", 1.5), (" b", 1.0)]),
        ("(word: 0.5 )", [("word", 0.5)]),  # spaces around an explicit weight
        ("((a:2) b)", [("a", 2.0 * 1.1), (" b", 1.1)]),  # nesting multiplies
        ("[(a:1.5)]", [("a", 1.5 / 1.1)]),
        ("a) b] c", [("a) b] c", 1.0)]),  # closers without an opener are text
        ("[unbalanced", [("unbalanced", 1 / 1.1)]),
        ("a:b", [("a:b", 1.0)]),  # a colon outside a weight is text
        ("\\\\ and \\", [("\\ and ", 1.0)]),  # an escaped backslash; a lone one is dropped, as in A1111
        ("a\\b", [("ab", 1.0)]),
        ("\\(a\\) (b)", [("(a) ", 1.0), ("b", 1.1)]),
        ("(a:1.2.3)", [("a:1.2.3)", 1.1)]),  # not a number: text (A1111 raises), the bracket stays open
    ],
)
def test_attention_rules(text, expected):
    _same_runs(parse_prompt_attention(text), expected)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a BREAK b", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("a\nBREAK\nb", [("a", 1.0), BREAK, ("b", 1.0)]),
        ("BREAK b", [("", 1.0), BREAK, ("b", 1.0)]),
        ("a break b", [("a break b", 1.0)]),  # only the upper-case word
        ("aBREAK b", [("aBREAK b", 1.0)]),
        ("a BREAK, b", [("a", 1.0), BREAK, (", b", 1.0)]),
        # Inside brackets it still breaks and keeps its marker (A1111 weights the marker and encodes "break").
        ("(a BREAK b)", [("a", 1.1), BREAK, ("b", 1.1)]),
        ("(x BREAK:-1)", [("x", -1.0), BREAK, ("", -1.0)]),
    ],
)
def test_break(text, expected):
    _same_runs(parse_prompt_attention(text), expected)


@pytest.mark.parametrize(
    "text", ["(" * 5000 + "cat" + ")" * 5000, "[" * 5000 + "cat", "(" * 33 + "cat", "(cat:1" + "0" * 400 + ")",
             "((cat:99))"],
)  # fmt: skip
def test_emphasis_beyond_the_limit_is_refused_naming_it(text):
    """1.1 ** 5000 is inf: the conditioning becomes NaN and the image black. Refused with one line instead."""
    from studio.core.errors import RequestError

    with pytest.raises(RequestError, match=r"limit") as info:
        parse_prompt_attention(text)
    assert "\n" not in str(info.value) and len(str(info.value)) < 200


def test_emphasis_up_to_the_limit_is_kept():
    deep = parse_prompt_attention("(" * 32 + "cat" + ")" * 32)
    assert deep == [("cat", pytest.approx(1.1**32))]
    assert parse_prompt_attention("(cat:100) [dog:0]")[0] == ("cat", 100.0)


def test_extract_loras():
    assert extract_loras("a cat <lora:foo:0.8>, <lora:bar> dog") == ("a cat ,  dog", [("foo", 0.8), ("bar", 1.0)])
    assert extract_loras("<lyco:thing:0.5>x") == ("x", [("thing", 0.5)])
    assert extract_loras("<lora:a:te=0.3>") == ("", [("a", 0.3)])
    assert extract_loras("<lora:a:0.7:0.2>") == ("", [("a", 0.7)])  # the second number is A1111's U-Net weight
    assert extract_loras("<lora:my-lora_v2.1:-0.5>") == ("", [("my-lora_v2.1", -0.5)])
    # Every extra-network tag leaves the text, as in A1111; only LoRAs are returned.
    assert extract_loras("a <hypernet:h:1> b") == ("a  b", [])
    assert extract_loras("no tags, (a:1.2) <notatag>") == ("no tags, (a:1.2) <notatag>", [])
    with pytest.raises(ValueError, match="not a number"):
        extract_loras("<lora:x:strong>")


# --- chunking (pure) --------------------------------------------------------------------------------------------

COMMA = 267


def _pieces(*runs):
    return [None if r is None else ([[t] for t in r[0]], r[1]) for r in runs]


def test_chunks_split_at_75():
    chunks = split_chunks(_pieces((list(range(1, 81)), 1.0)), COMMA)
    assert [len(t) for t, _ in chunks] == [75, 5]
    assert chunks[0][0] == list(range(1, 76))


def test_comma_backtracking():
    # A comma 5 tokens before the chunk is full: what follows it moves to the next chunk.
    tokens = list(range(1, 71)) + [COMMA] + list(range(100, 110))
    chunks = split_chunks(_pieces((tokens, 1.2)), COMMA)
    assert chunks[0][0] == list(range(1, 71)) + [COMMA]
    assert chunks[1][0] == list(range(100, 110))
    assert chunks[1][1] == [1.2] * 10
    # More than 20 tokens back: no backtracking.
    tokens = list(range(1, 50)) + [COMMA] + list(range(100, 130))
    assert [len(t) for t, _ in split_chunks(_pieces((tokens, 1.0)), COMMA)] == [75, 5]
    assert [len(t) for t, _ in split_chunks(_pieces((tokens, 1.0)), COMMA, backtrack=0)] == [75, 5]


def test_break_chunks_and_multi_vector_units():
    assert split_chunks(_pieces(([1, 2], 1.0), None, ([3], 1.5)), COMMA) == [([1, 2], [1.0, 1.0]), ([3], [1.5])]
    assert split_chunks(_pieces(([], 1.0), None, ([3], 1.0)), COMMA) == [([], []), ([3], [1.0])]
    assert split_chunks(_pieces(([1], 1.0), None, ([], 1.0)), COMMA) == [([1], [1.0])]
    assert split_chunks([], COMMA) == [([], [])]
    # A 3-vector embedding that would straddle the 75 boundary starts the next chunk.
    pieces = [([[t] for t in range(1, 74)] + [[500, 501, 502]], 1.0)]
    assert [len(t) for t, _ in split_chunks(pieces, COMMA)] == [73, 3]


# --- conditioning tensors ---------------------------------------------------------------------------------------

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def sd_pipe(tiny_model):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(
        tiny_model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _fresh_sd(tiny_model):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(
        tiny_model, local_files_only=True, safety_checker=None, requires_safety_checker=False
    )


def _tiny_sdxl(force_zeros: bool = True):
    """A random-weight SDXL pipeline of the shapes diffusers' own SDXL tests use."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from studio.paths import TOKENIZER_DIR

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=(1, 2),
        projection_class_embeddings_input_dim=80,  # 6 * 8 + 32
        cross_attention_dim=64,
        norm_num_groups=1,
    )
    vae = AutoencoderKL(
        block_out_channels=[32, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D", "DownEncoderBlock2D"],
        up_block_types=["UpDecoderBlock2D", "UpDecoderBlock2D"],
        latent_channels=4,
        sample_size=128,
    )
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", timestep_spacing="leading", steps_offset=1
    )
    config = CLIPTextConfig(
        bos_token_id=49406,
        eos_token_id=49407,
        pad_token_id=1,
        hidden_size=32,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=3,
        vocab_size=49408,
        hidden_act="gelu",
        projection_dim=32,
        max_position_embeddings=77,
    )
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(config)
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(config)
    tokenizer = CLIPTokenizer.from_pretrained(TOKENIZER_DIR)
    tokenizer_2 = CLIPTokenizer.from_pretrained(TOKENIZER_DIR, pad_token="!")
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=force_zeros,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def sdxl_pipe():
    return _tiny_sdxl()


def _final_layer_norm(text_encoder):
    return next(m for n, m in text_encoder.named_modules() if n.endswith("final_layer_norm"))


def _close(a, b, tol=1e-6):
    assert a.shape == b.shape, (a.shape, b.shape)
    assert torch.allclose(a, b, atol=tol, rtol=0), (a - b).abs().max().item()


def _ids(tokenizer, text):
    return tokenizer(text, padding="max_length", max_length=77, return_tensors="pt").input_ids


PROMPT = "a photo of a cat sitting on a red chair, highly detailed"
NEGATIVE = "blurry, low quality"


@pytest.mark.parametrize("negative", [NEGATIVE, ""])
def test_sd_plain_prompt_equals_diffusers(sd_pipe, negative):
    from studio.engine.conditioning import encode

    out = encode(sd_pipe, PROMPT, negative)
    ref, ref_neg = sd_pipe.encode_prompt(PROMPT, "cpu", 1, True, negative_prompt=negative or None)
    assert set(out) == {"prompt_embeds", "negative_prompt_embeds"}
    _close(out["prompt_embeds"], ref)
    _close(out["negative_prompt_embeds"], ref_neg)


def test_sd_pipeline_accepts_the_kwargs(sd_pipe):
    from studio.engine.conditioning import encode

    kwargs = encode(sd_pipe, "(cat:1.3) " + "word " * 90, "[ugly]")
    assert kwargs["prompt_embeds"].shape[1] == 154
    latents = sd_pipe(
        **kwargs, num_inference_steps=1, height=64, width=64, guidance_scale=5.0, output_type="latent"
    ).images
    assert torch.isfinite(latents).all()


def _weighted_reference(pipe, text, weights_at):
    """A1111's rule by hand: z * w per token, then rescaled to the unweighted mean."""
    with torch.no_grad():
        z = pipe.text_encoder(_ids(pipe.tokenizer, text))[0][0]
    w = torch.ones(77)
    for pos, weight in weights_at.items():
        w[pos] = weight
    weighted = z * w[:, None]
    return z, weighted, weighted * (z.mean() / weighted.mean())


@pytest.mark.parametrize(("syntax", "weight"), [("(cat:1.5)", 1.5), ("[cat]", 1 / 1.1), ("((cat))", 1.21)])
def test_sd_weight_scales_the_token_and_keeps_the_mean(tiny_model, syntax, weight):
    from studio.engine.conditioning import encode

    # A trained CLIP's last LayerNorm has a bias, so its vectors' mean is not 0; this random one's may be left
    # at 0 (transformers 5.24 does), which makes every vector's mean 0 and the rescale meaningless: give it one
    sd_pipe = _fresh_sd(tiny_model)
    with torch.no_grad():
        ln = _final_layer_norm(sd_pipe.text_encoder)
        ln.bias.copy_(torch.linspace(-0.5, 1.0, ln.bias.numel()))

    out = encode(sd_pipe, f"a {syntax} sitting", "")["prompt_embeds"][0]
    cat = 2  # <start> a cat sitting
    z, weighted, expected = _weighted_reference(sd_pipe, "a cat sitting", {cat: weight})
    _close(out, expected)
    # Before the mean is restored, only the cat's vector is scaled: one common factor r everywhere else.
    r = (out[1] @ z[1]) / (z[1] @ z[1])  # least squares: sturdier than an element-wise ratio
    _close(out / r, weighted, tol=1e-5)
    _close(out[cat] / r, z[cat] * weight, tol=1e-5)
    assert torch.allclose(out.mean(), z.mean(), atol=1e-6)
    assert not torch.allclose(out, z)


def test_sd_long_prompt_two_chunks_and_negative_padding(sd_pipe):
    from studio.engine.conditioning import encode

    words = " ".join(["cat"] * 80)
    out = encode(sd_pipe, words, "blurry")
    assert out["prompt_embeds"].shape == (1, 154, 32)
    assert out["negative_prompt_embeds"].shape == (1, 154, 32)
    # Each chunk is encoded on its own: the first is the first 75 words, the second the other 5.
    first, _ = sd_pipe.encode_prompt(" ".join(["cat"] * 75), "cpu", 1, False)
    second, _ = sd_pipe.encode_prompt(" ".join(["cat"] * 5), "cpu", 1, False)
    _close(out["prompt_embeds"][:, :77], first)
    _close(out["prompt_embeds"][:, 77:], second)
    # The short negative is padded with an encoded empty chunk.
    neg, _ = sd_pipe.encode_prompt("blurry", "cpu", 1, False)
    empty, _ = sd_pipe.encode_prompt("", "cpu", 1, False)
    _close(out["negative_prompt_embeds"][:, :77], neg)
    _close(out["negative_prompt_embeds"][:, 77:], empty)
    # And the other way round: a long negative pads the positive.
    out = encode(sd_pipe, "cat", words)
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 154, 32)


def test_sd_break_and_comma_backtracking(sd_pipe):
    from studio.engine.conditioning import encode, tokenize_chunks

    out = encode(sd_pipe, "a cat BREAK a dog", "")
    assert out["prompt_embeds"].shape[1] == 154 == out["negative_prompt_embeds"].shape[1]
    cat, _ = sd_pipe.encode_prompt("a cat", "cpu", 1, False)
    dog, _ = sd_pipe.encode_prompt("a dog", "cpu", 1, False)
    _close(out["prompt_embeds"], torch.cat([cat, dog], dim=1))

    text = " ".join(["cat"] * 70) + ", " + " ".join(["dog"] * 10)
    chunks = tokenize_chunks(sd_pipe, sd_pipe.tokenizer, text)
    assert [len(t) for t, _ in chunks] == [71, 10]  # the chunk ends at the comma


def test_sd_clip_skip(sd_pipe):
    from studio.engine.conditioning import encode

    one = encode(sd_pipe, PROMPT, NEGATIVE)
    two = encode(sd_pipe, PROMPT, NEGATIVE, clip_skip=2)
    assert not torch.allclose(one["prompt_embeds"], two["prompt_embeds"])
    te = sd_pipe.text_encoder
    norm = getattr(te, "text_model", te).final_layer_norm  # on the model itself in transformers 5
    with torch.no_grad():
        for text, key in ((PROMPT, "prompt_embeds"), (NEGATIVE, "negative_prompt_embeds")):
            hidden = te(_ids(sd_pipe.tokenizer, text), output_hidden_states=True).hidden_states[-2]
            _close(two[key], norm(hidden))
    # (diffusers' own encode_prompt(clip_skip=1), the same layer, fails under transformers 5: no `text_model`.)


def test_sd_textual_inversion(tiny_model):
    from studio.engine.conditioning import encode, tokenize_chunks

    pipe = _fresh_sd(tiny_model)
    with torch.no_grad():  # a mean to keep (see test_sd_weight_scales_the_token_and_keeps_the_mean)
        ln = _final_layer_norm(pipe.text_encoder)
        ln.bias.copy_(torch.linspace(-0.5, 1.0, ln.bias.numel()))
    torch.manual_seed(3)
    vectors = torch.randn(3, 32) * 2
    pipe.load_textual_inversion(vectors, token="<mystyle>")
    tok = pipe.tokenizer
    ids = tok.convert_tokens_to_ids(["<mystyle>", "<mystyle>_1", "<mystyle>_2"])
    table = pipe.text_encoder.get_input_embeddings().weight
    assert torch.equal(table[ids], vectors)

    # The 3 vectors take 3 positions of the chunk, and the result is what diffusers makes of the same prompt.
    chunks = tokenize_chunks(pipe, tok, "a <mystyle> cat")
    assert chunks[0][0][1:4] == ids
    out = encode(pipe, "a <mystyle> cat", "")
    ref, _ = pipe.encode_prompt("a <mystyle> cat", "cpu", 1, False)
    _close(out["prompt_embeds"], ref)
    plain = encode(pipe, "a cat", "")
    assert not torch.allclose(out["prompt_embeds"], plain["prompt_embeds"])

    # Weighted, the embedding's 3 positions get the weight.
    out = encode(pipe, "a (<mystyle>:1.4) cat", "")["prompt_embeds"][0]
    with torch.no_grad():
        z = pipe.text_encoder(_ids(tok, "a <mystyle> <mystyle>_1 <mystyle>_2 cat"))[0][0]
    w = torch.ones(77)
    w[2:5] = 1.4
    expected = z * w[:, None]
    _close(out, expected * (z.mean() / expected.mean()))

    # A 3-vector embedding is not split across chunks.
    chunks = tokenize_chunks(pipe, tok, " ".join(["cat"] * 73) + " <mystyle>")
    assert [len(t) for t, _ in chunks] == [73, 3]


def test_loras_are_stripped_before_encoding(sd_pipe):
    from studio.engine.conditioning import encode

    a = encode(sd_pipe, "a cat <lora:foo:0.5>", "<lora:bar:1>")
    b = encode(sd_pipe, "a cat ", "")
    _close(a["prompt_embeds"], b["prompt_embeds"], tol=0)
    _close(a["negative_prompt_embeds"], b["negative_prompt_embeds"], tol=0)


@pytest.mark.parametrize("negative", [NEGATIVE, ""])
def test_sdxl_plain_prompt_equals_diffusers(sdxl_pipe, negative):
    from studio.engine.conditioning import encode

    out = encode(sdxl_pipe, PROMPT, negative)
    ref = sdxl_pipe.encode_prompt(
        PROMPT,
        device="cpu",
        num_images_per_prompt=1,
        do_classifier_free_guidance=True,
        negative_prompt=negative or None,
    )
    names = ["prompt_embeds", "negative_prompt_embeds", "pooled_prompt_embeds", "negative_pooled_prompt_embeds"]
    assert set(out) == set(names)
    for name, r in zip(names, ref, strict=True):
        _close(out[name], r)
    assert out["prompt_embeds"].shape == (1, 77, 64)
    assert out["pooled_prompt_embeds"].shape == (1, 32)
    if not negative:  # force_zeros_for_empty_prompt
        assert not out["negative_prompt_embeds"].any() and not out["negative_pooled_prompt_embeds"].any()


def test_sdxl_empty_negative_without_force_zeros():
    from studio.engine.conditioning import encode

    pipe = _tiny_sdxl(force_zeros=False)
    out = encode(pipe, PROMPT, "")
    ref = pipe.encode_prompt(PROMPT, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True)
    _close(out["negative_prompt_embeds"], ref[1])
    _close(out["negative_pooled_prompt_embeds"], ref[3])
    assert out["negative_prompt_embeds"].abs().sum() > 0


def test_sdxl_long_weighted_prompt(sdxl_pipe):
    from studio.engine.conditioning import encode

    pipe = sdxl_pipe
    text = " ".join(["cat"] * 80)
    out = encode(pipe, text.replace("cat", "(cat:1.5)", 1), "")
    assert out["prompt_embeds"].shape == out["negative_prompt_embeds"].shape == (1, 154, 64)
    # Pooled: text_encoder_2's projection of the first chunk, unweighted.
    first = " ".join(["cat"] * 75)
    ref = pipe.encode_prompt(first, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    _close(out["pooled_prompt_embeds"], ref[2])
    # Each encoder's half is weighted and rescaled to its own mean; no final layer norm (penultimate states).
    with torch.no_grad():
        for enc, tok, half in (
            (pipe.text_encoder, pipe.tokenizer, slice(0, 32)),
            (pipe.text_encoder_2, pipe.tokenizer_2, slice(32, 64)),
        ):
            z = enc(_ids(tok, first), output_hidden_states=True).hidden_states[-2][0]
            w = torch.ones(77)
            w[1] = 1.5
            expected = z * w[:, None]
            _close(out["prompt_embeds"][0, :77, half], expected * (z.mean() / expected.mean()))
    # The second chunk is the last 5 words, unweighted.
    rest = pipe.encode_prompt(
        " ".join(["cat"] * 5), device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False
    )
    _close(out["prompt_embeds"][:, 77:], rest[0])
    # The pipeline takes these (zeroed negative included).
    latents = pipe(**out, num_inference_steps=1, height=64, width=64, guidance_scale=5.0, output_type="latent").images
    assert torch.isfinite(latents).all()


def test_sdxl_ignores_clip_skip_as_a1111(sdxl_pipe):
    from studio.engine.conditioning import encode

    one = encode(sdxl_pipe, PROMPT, NEGATIVE)
    two = encode(sdxl_pipe, PROMPT, NEGATIVE, clip_skip=2)
    for key in one:
        _close(one[key], two[key], tol=0)


def test_sd_weight_on_an_encoder_whose_mean_is_zero_scales_without_rescaling(sd_pipe):
    """Every vector of a LayerNorm without bias has mean 0: no mean to keep, so the weight alone applies
    (the ratio of two roundoff errors zeroed every vector)."""
    from studio.engine.conditioning import encode

    with torch.no_grad():
        ln = _final_layer_norm(sd_pipe.text_encoder)
        if ln.bias.abs().max() > 0:
            pytest.skip("this encoder's LayerNorm has a bias")
    out = encode(sd_pipe, "a (cat:1.5) sitting", "")["prompt_embeds"][0]
    z = _weighted_reference(sd_pipe, "a cat sitting", {})[0]
    _close(out[2], z[2] * 1.5, tol=1e-5)
    _close(out[1], z[1], tol=1e-6)
