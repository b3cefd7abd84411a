"""A branch on a ComfyUI server: the parent's first k steps again with their leftover noise (KSamplerAdvanced 0 -> k),
then the branch's k -> n with no noise added; checked against the recorded server's object_info. What cannot run
remotely (another schedule or step count) is refused with the reason."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

from studio.backends.base import UnsupportedError
from studio.backends.comfyui.graphs import ObjectInfo, build_graph, find_nodes, validate, why_no_remote_branch
from studio.core.branch import BranchSpec
from studio.core.requests import GenerateRequest

DATA = Path(__file__).parent / "data" / "comfyui" / "object_info-0.27.json"
CKPT = "tiny-sd15.safetensors"


@pytest.fixture(scope="module")
def info() -> ObjectInfo:
    return ObjectInfo(copy.deepcopy(json.loads(DATA.read_text(encoding="utf-8"))))


PARENT = GenerateRequest(prompt="a red fox", negative_prompt="blurry", sampler="DPM++ 2M", schedule="Karras", steps=20,
                         cfg=6.0, seed=1234, width=512, height=512)  # fmt: skip


def branch(**changes) -> GenerateRequest:
    return PARENT.replace(branch=BranchSpec(8, None, PARENT, "fox.png", "0123456789"), **changes)


def samplers(g: dict) -> list[dict]:
    return [g[i]["inputs"] for i in find_nodes(g, "KSamplerAdvanced")]


def test_branch_graph_recomputes_k_steps_then_continues_without_noise(info):
    g = build_graph(branch(prompt="a blue fox", cfg=8.0, sampler="Euler"), info, checkpoint=CKPT)
    validate(g, info)
    assert not find_nodes(g, "KSampler")
    first, rest = samplers(g)
    assert (first["add_noise"], first["start_at_step"], first["end_at_step"], first["return_with_leftover_noise"]) == \
        ("enable", 0, 8, "enable")  # fmt: skip
    assert (first["noise_seed"], first["steps"], first["cfg"], first["sampler_name"], first["scheduler"]) == \
        (1234, 20, 6.0, "dpmpp_2m", "karras")  # fmt: skip
    assert (rest["add_noise"], rest["start_at_step"], rest["end_at_step"], rest["return_with_leftover_noise"]) == \
        ("disable", 8, 10000, "disable")  # fmt: skip
    assert (rest["steps"], rest["cfg"], rest["sampler_name"], rest["scheduler"]) == (20, 8.0, "euler", "karras")
    assert rest["latent_image"] == [find_nodes(g, "KSamplerAdvanced")[0], 0]
    text = lambda link: g[link[0]]["inputs"]["text"]  # noqa: E731
    assert (text(first["positive"]), text(rest["positive"])) == ("a red fox", "a blue fox")
    assert text(first["negative"]) == text(rest["negative"]) == "blurry"
    decode = g[find_nodes(g, "VAEDecode")[0]]["inputs"]
    assert decode["samples"] == [find_nodes(g, "KSamplerAdvanced")[1], 0]


def test_unchanged_prompt_shares_the_conditioning(info):
    g = build_graph(branch(cfg=9.0), info, checkpoint=CKPT)
    first, rest = samplers(g)
    assert first["positive"] == rest["positive"] and len(find_nodes(g, "CLIPTextEncode")) == 2


@pytest.mark.parametrize("changes", [dict(steps=30), dict(schedule="Normal")])
def test_what_the_server_cannot_do_is_said(info, changes):
    r = branch(**changes)
    why = why_no_remote_branch(r)
    assert "keeps the parent's schedule and step count" in why
    with pytest.raises(UnsupportedError, match="schedule and step count"):
        build_graph(r, info, checkpoint=CKPT)
    assert why_no_remote_branch(PARENT) == "" and why_no_remote_branch(branch(seed=5)) == ""
