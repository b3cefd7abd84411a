"""Memory options on a loaded model, the out-of-memory advice, A1111's v-prediction test, the metadata keys of
add-ons as A1111 writes and reads them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from studio.core.memory import MemoryOptions, out_of_memory_advice
from studio.core.metadata import format_parameters, parameters_for, parse_parameters, request_fields
from studio.core.requests import GenerateRequest
from studio.engine.engine import Engine
from studio.engine.singlefile import detect_v_prediction


def test_memory_options_switch_on_the_loaded_model_without_reloading(tiny_model):
    engine = Engine(device="cpu")
    r = GenerateRequest(prompt="x", model=tiny_model, steps=1, width=64, height=64, seed=1)
    plain = engine.generate(r).images[0]
    loads = engine.loads
    engine.set_memory(MemoryOptions(attention_slicing=True, vae_tiling=True))
    sliced = engine.generate(r)
    assert engine.loads == loads
    vae = engine._model.base.vae
    assert vae.use_tiling
    procs = {type(p).__name__ for p in engine._model.base.unet.attn_processors.values()}
    assert any("Sliced" in n for n in procs), procs
    assert abs(sliced.images[0].astype(int) - plain.astype(int)).max() <= 1  # the same picture
    engine.set_memory(MemoryOptions())
    engine.generate(r)
    assert not engine._model.base.vae.use_tiling
    assert not any("Sliced" in type(p).__name__ for p in engine._model.base.unet.attn_processors.values())
    engine.set_memory(MemoryOptions(offload="model"))
    engine.generate(r)  # a new placement reloads (a no-op on the CPU, but a fresh load)
    assert engine.loads == loads + 1


def test_out_of_memory_advice_names_the_next_option():
    assert out_of_memory_advice(MemoryOptions(), "cuda").endswith("or turn on VAE tiling (Settings > Memory)")
    assert "attention slicing" in out_of_memory_advice(MemoryOptions(vae_tiling=True), "cuda")
    assert "model CPU offload" in out_of_memory_advice(MemoryOptions(True, True), "cuda")
    assert "sequential" in out_of_memory_advice(MemoryOptions(True, True, "model"), "mps")
    assert MemoryOptions(offload="bogus").offload == "none"
    with pytest.raises(TypeError, match="offload"):  # the artist's settings, not a run's: the backend holds them
        GenerateRequest(prompt="x", offload="model")


class _Unet(torch.nn.Module):
    """A U-Net stand-in whose output at t=999 is `k` times its input (a v-model gives about -x0 there)."""

    def __init__(self, k: float):
        super().__init__()
        self.k = k
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.config = SimpleNamespace(cross_attention_dim=16, in_channels=4)

    def forward(self, x, t, encoder_hidden_states):
        assert int(t[0]) == 999 and encoder_hidden_states.shape == (1, 2, 16)
        return SimpleNamespace(sample=x * self.k)


def test_v_prediction_decided_as_a1111_does():
    assert detect_v_prediction(_Unet(-2.0)) == "v_prediction"  # mean(out - x) = -1.5 < -1
    assert detect_v_prediction(_Unet(1.0)) == "epsilon"
    assert detect_v_prediction(_Unet(-0.5)) == "epsilon"  # -0.75: not below -1


def test_addon_keys_written_in_a1111_order_and_read_back():
    r = GenerateRequest(prompt="a fox <lora:ink:0.8> easyneg", steps=20, seed=3, width=512, height=512)
    extra = {"Lora hashes": "ink: 0123456789ab", "TI hashes": "easyneg: ba9876543210", "VAE": "ft-mse",
             "VAE hash": "abcdef0123"}  # fmt: skip
    text = parameters_for(r, 3, "dream", "1234567890", "t", extra)
    last = text.splitlines()[-1]
    keys = [kv.split(":")[0] for kv in last.split(", ") if ":" in kv and not kv.startswith(" ")]
    assert keys.index("Model") < keys.index("VAE hash") < keys.index("VAE") < keys.index("Lora hashes")
    assert 'Lora hashes: "ink: 0123456789ab"' in last and 'TI hashes: "easyneg: ba9876543210"' in last
    params = parse_parameters(text)["params"]
    assert params["Lora hashes"] == "ink: 0123456789ab" and params["VAE hash"] == "abcdef0123"
    fields = request_fields(text)
    assert fields["vae"] == "ft-mse" and fields["prompt"] == "a fox <lora:ink:0.8> easyneg"
    # An A1111 text: the same keys, read the same way.
    a1111 = format_parameters("castle", "", {"Steps": 30, "Sampler": "DPM++ 2M", "Seed": 1, "VAE hash": "235745af8d",
                                             "VAE": "vae-ft-mse-840000-ema-pruned",
                                             "Lora hashes": "add_detail: 7c6bad76eb54, ink: 0123456789ab"})
    assert request_fields(a1111)["vae"] == "vae-ft-mse-840000-ema-pruned"
    assert parse_parameters(a1111)["params"]["Lora hashes"] == "add_detail: 7c6bad76eb54, ink: 0123456789ab"
