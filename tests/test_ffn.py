"""Feed-forward variants (diffpali.ffn): mlp is a no-op, swiglu is eq. 7 on the pretrained weights."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from helpers import small_spec
from omegaconf import OmegaConf
from safetensors.torch import load_file
from torch import nn
from torch.nn import functional as F
from transformers import PaliGemmaForConditionalGeneration

from diffpali.config import FfnConfig, LoraConfig
from diffpali.data.collate import model_inputs
from diffpali.ffn import SiglipSwiGLU, apply_ffn
from diffpali.model import load_adapter, wrap_lora
from diffpali.zoo.tiny import build_config

CONF = Path(__file__).resolve().parents[1] / "conf" / "ffn"


def _text_mlps(model: nn.Module) -> list[nn.Module]:
    return [layer.mlp for layer in model.model.language_model.layers]


def _vision_mlps(model: nn.Module) -> list[nn.Module]:
    return [layer.mlp for layer in model.model.vision_tower.encoder.layers]


@torch.no_grad()
def _logits(model: nn.Module, batch: dict) -> torch.Tensor:
    return model(**model_inputs(batch, with_labels=False)).logits


@torch.no_grad()
def _vision_out(model: nn.Module, batch: dict) -> torch.Tensor:
    return model.model.vision_tower(pixel_values=batch["pixel_values"]).last_hidden_state


@torch.no_grad()
def _text_out(model: nn.Module, batch: dict) -> torch.Tensor:
    lm = model.model.language_model
    return lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state


def test_swiglu_yaml_is_a_valid_config():
    cfg = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(FfnConfig), OmegaConf.load(CONF / "swiglu.yaml")))
    cfg.validate()
    assert (cfg.variant, sorted(cfg.towers), cfg.gate_init) == ("swiglu", ["text", "vision"], "copy_fc1")


def test_mlp_leaves_logits_identical(tiny_model, tiny_batch):
    reference = copy.deepcopy(tiny_model)
    assert apply_ffn(tiny_model, FfnConfig(variant="mlp")) == []
    assert torch.equal(_logits(tiny_model, tiny_batch), _logits(reference, tiny_batch))


@pytest.mark.parametrize("gate_init", ["copy_fc1", "random"])
def test_swiglu_computes_eq7(tiny_model, gate_init):
    names = apply_ffn(tiny_model, FfnConfig(variant="swiglu", gate_init=gate_init))
    model = tiny_model.double()  # float64, so the reference below may use other kernels than the module
    x = torch.randn(2, 5, model.config.text_config.hidden_size, dtype=torch.float64)

    for mlp in _text_mlps(model):
        wg, w1, w2 = mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight
        expected = (F.silu(x @ wg.T) * (x @ w1.T)) @ w2.T
        torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)

    vision = _vision_mlps(model)
    assert names == [f"model.vision_tower.encoder.layers.{i}.mlp.gate" for i in range(len(vision))]
    for mlp in vision:
        assert isinstance(mlp, SiglipSwiGLU)
        g, f1, f2 = mlp.gate, mlp.fc1, mlp.fc2
        expected = (F.silu(x @ g.weight.T + g.bias) * (x @ f1.weight.T + f1.bias)) @ f2.weight.T + f2.bias
        torch.testing.assert_close(mlp(x), expected, rtol=1e-12, atol=1e-12)


def test_gemma_swiglu_reuses_pretrained_weights_and_swaps_only_the_activation(tiny_model):
    mlp = _text_mlps(tiny_model)[0]
    params = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    values = [p.detach().clone() for p in params]
    x = torch.randn(2, 5, tiny_model.config.text_config.hidden_size)
    with torch.no_grad():
        geglu = mlp(x)

    apply_ffn(tiny_model, FfnConfig(variant="swiglu", towers=["text"]))

    mlp = _text_mlps(tiny_model)[0]
    after = [mlp.gate_proj.weight, mlp.up_proj.weight, mlp.down_proj.weight]
    assert all(a is p and torch.equal(a, v) for a, p, v in zip(after, params, values))
    assert isinstance(mlp.act_fn, nn.SiLU)
    assert tiny_model.config.text_config.hidden_act == "gelu_pytorch_tanh"  # the module changed, not the config
    with torch.no_grad():
        swiglu = mlp(x)
        silu_gated = F.linear(F.silu(F.linear(x, after[0])) * F.linear(x, after[1]), after[2])
        gelu_gated = F.linear(F.gelu(F.linear(x, after[0]), approximate="tanh") * F.linear(x, after[1]), after[2])
    assert torch.equal(geglu, gelu_gated)  # the stock module was gelu-tanh gated
    assert torch.equal(swiglu, silu_gated)
    assert not torch.allclose(swiglu, geglu, atol=1e-4)


def test_siglip_swiglu_reuses_fc1_fc2(tiny_model):
    fc1, fc2 = _vision_mlps(tiny_model)[0].fc1, _vision_mlps(tiny_model)[0].fc2
    apply_ffn(tiny_model, FfnConfig(variant="swiglu", towers=["vision"]))
    mlp = _vision_mlps(tiny_model)[0]
    assert mlp.fc1 is fc1 and mlp.fc2 is fc2


def test_gate_init(tiny_model):
    random_model = copy.deepcopy(tiny_model)
    apply_ffn(tiny_model, FfnConfig(variant="swiglu", towers=["vision"], gate_init="copy_fc1"))
    apply_ffn(random_model, FfnConfig(variant="swiglu", towers=["vision"], gate_init="random"))
    for mlp in _vision_mlps(tiny_model):
        assert torch.equal(mlp.gate.weight, mlp.fc1.weight) and torch.equal(mlp.gate.bias, mlp.fc1.bias)
        # a copy, not a tie: training the gate must not move fc1
        assert mlp.gate.weight.data_ptr() != mlp.fc1.weight.data_ptr()
    for mlp in _vision_mlps(random_model):
        assert not torch.allclose(mlp.gate.weight, mlp.fc1.weight)


@pytest.mark.parametrize(
    ("tower", "untouched", "changed"), [("text", _vision_out, _text_out), ("vision", _text_out, _vision_out)]
)
def test_towers_select_what_changes(tiny_model, tiny_batch, tower, untouched, changed):
    reference = copy.deepcopy(tiny_model)
    apply_ffn(tiny_model, FfnConfig(variant="swiglu", towers=[tower]))
    assert torch.equal(untouched(tiny_model, tiny_batch), untouched(reference, tiny_batch))
    assert not torch.allclose(changed(tiny_model, tiny_batch), changed(reference, tiny_batch), atol=1e-4)


def test_applying_twice_is_refused(tiny_model):
    cfg = FfnConfig(variant="swiglu", towers=["vision"])
    apply_ffn(tiny_model, cfg)
    with pytest.raises(ValueError, match="no vision MLP"):
        apply_ffn(tiny_model, cfg)


def test_lora_trains_saves_and_reloads_the_gate(tiny_model, tiny_processor, tiny_batch, tmp_path):
    # random gates: a reload could only match if the trained gates come from the adapter file
    cfg = FfnConfig(variant="swiglu", gate_init="random")
    names = apply_ffn(tiny_model, cfg)
    initial_gates = [m.gate.weight.detach().clone() for m in _vision_mlps(tiny_model)]
    model = wrap_lora(tiny_model, LoraConfig(rank=4, alpha=8), names)

    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert sum(".mlp.gate.modules_to_save." in n for n in trainable) == 2 * len(names)  # weight and bias
    model.train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):
        loss = model(**model_inputs(tiny_batch)).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    model.eval()
    trained_gates = {n: model.get_submodule(f"base_model.model.{n}").modules_to_save["default"].weight for n in names}
    assert all(not torch.equal(g, g0) for g, g0 in zip(trained_gates.values(), initial_gates))

    model.save_pretrained(tmp_path)
    saved = load_file(tmp_path / "adapter_model.safetensors")
    for name, gate in trained_gates.items():
        (key,) = [k for k in saved if k.endswith(f"{name}.weight")]
        assert torch.equal(saved[key], gate)

    torch.manual_seed(0)
    fresh = PaliGemmaForConditionalGeneration(build_config(small_spec(), tiny_processor)).eval()
    torch.manual_seed(1)  # other random gates than at training time
    assert apply_ffn(fresh, cfg) == names
    assert not torch.equal(_vision_mlps(fresh)[0].gate.weight, initial_gates[0])
    reloaded = load_adapter(fresh, tmp_path)
    assert torch.equal(_logits(reloaded, tiny_batch), _logits(model, tiny_batch))
