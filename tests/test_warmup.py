"""lambda warm-up (``attn.lambda_warmup_steps``): a retrofit that starts as the pretrained model and ramps the
subtracted map in, on tiny random PaliGemmas with the real transformers, peft and Lightning classes."""

from __future__ import annotations

import copy
from dataclasses import asdict, replace

import lightning as L
import pytest
import torch
from helpers import small_spec, tiny_paligemma2
from transformers import PaliGemmaForConditionalGeneration

from diffpali.attention import lambda_init_for
from diffpali.config import ConfigError, FfnConfig, LoraConfig, TinySpec, attn_settings
from diffpali.data.collate import model_inputs
from diffpali.lambda_callback import LambdaHistory, LambdaWarmup, warmup_ramp
from diffpali.lambda_history import read_history
from diffpali.model import load_adapter, save_adapter, wrap_lora
from diffpali.surgery import apply_attention, lambda_values, set_lambda_ramp
from diffpali.zoo.tiny import build_config, spec_key, stage0_key

#: The function-preserving retrofits: tied lambda pairs, no head norm, lambda_init (by depth, the paper's
#: schedule) or the plain gate ramped in from 0.
FAIR = {
    "diff_dup_separate": dict(variant="diff_dup", dup_mode="separate", lambda_pairs="tied", head_norm=False),
    "diff_dup_shared": dict(variant="diff_dup", dup_mode="shared", lambda_pairs="tied", head_norm=False),
    "diff_v2_plain": dict(variant="diff_v2", v2_lambda_init="plain"),
}


def settings(fields: dict, warmup: int = 100):
    cfg = attn_settings({**fields, "lambda_warmup_steps": warmup})
    cfg.validate()
    return cfg


def build(decoder: str, processor) -> PaliGemmaForConditionalGeneration:
    if decoder == "gemma2":
        return tiny_paligemma2(processor, seed=0)
    torch.manual_seed(0)
    model = PaliGemmaForConditionalGeneration(build_config(small_spec(), processor)).eval()
    with torch.no_grad():  # O(1) attention outputs, as a trained model has: a leak of lambda would show
        for name, param in model.named_parameters():
            if name.endswith("v_proj.weight"):
                param.mul_(20.0)
    return model


@torch.no_grad()
def logits(model, inputs) -> torch.Tensor:
    return model(**inputs).logits


@pytest.mark.parametrize("decoder", ["gemma", "gemma2"])
@pytest.mark.parametrize("name", sorted(FAIR))
def test_warmup_starts_as_the_pretrained_model_and_lambda_has_a_gradient(decoder, name, tiny_processor, tiny_batch):
    pretrained = build(decoder, tiny_processor)
    model = copy.deepcopy(pretrained)
    apply_attention(model, settings(FAIR[name]))
    inputs = model_inputs(tiny_batch, with_labels=False)
    assert torch.allclose(logits(model, inputs), logits(pretrained, inputs), atol=1e-5)

    model.train()
    model(**model_inputs(tiny_batch)).loss.backward()
    learned = ("gate",) if name.startswith("diff_v2") else ("lq1", "lk1", "lq2", "lk2")
    grads = [p.grad for n, p in model.named_parameters() if "diff_lambda" in n and n.rsplit(".", 1)[-1] in learned]
    assert grads and all(g is not None for g in grads)
    assert max(float(g.abs().max()) for g in grads) > 0


def test_without_warmup_the_same_settings_change_the_output(tiny_processor, tiny_batch):
    """The control of the test above: lambda_init at full strength from step 0 does change the model."""
    pretrained = build("gemma", tiny_processor)
    model = copy.deepcopy(pretrained)
    apply_attention(model, settings(FAIR["diff_dup_separate"], warmup=0))
    inputs = model_inputs(tiny_batch, with_labels=False)
    assert not torch.allclose(logits(model, inputs), logits(pretrained, inputs), atol=1e-3)


def test_the_full_ramp_is_the_target_lambda(tiny_processor, tiny_batch):
    for name in ("diff_dup_separate", "diff_v2_plain"):
        model = build("gemma", tiny_processor)
        cfg = settings(FAIR[name])
        apply_attention(model, cfg)
        model(**model_inputs(tiny_batch, with_labels=False))  # V2's lambda is per token: read after a forward
        assert set_lambda_ramp(model, 0.0) == 4  # two layers in each of two towers
        start = lambda_values(model)
        set_lambda_ramp(model, 1.0)
        model(**model_inputs(tiny_batch, with_labels=False))
        end = lambda_values(model)
        for depth in range(2):
            key = f"text/layer{depth}"
            target = 0.5 if name == "diff_v2_plain" else lambda_init_for(depth, cfg)  # sigmoid(0) x the gate of 1
            assert start[key] == pytest.approx(0.0, abs=1e-7)
            assert end[key] == pytest.approx(target, abs=1e-6)
            assert end[f"{key}/learned"] == pytest.approx(0.0, abs=1e-7)  # nothing learned yet


def test_v2_warmup_needs_the_plain_init():
    with pytest.raises(ConfigError, match=r"attn.lambda_warmup_steps=10: needs attn.v2_lambda_init=plain"):
        settings({"variant": "diff_v2", "v2_lambda_init": "exact"}, warmup=10)
    with pytest.raises(ConfigError, match=r"attn.lambda_warmup_steps=-1: must be a whole number"):
        settings(FAIR["diff_dup_separate"], warmup=-1)


def test_warmup_ramp_schedule():
    assert [warmup_ramp(step, 4) for step in (0, 1, 2, 4, 9)] == [0.0, 0.25, 0.5, 1.0, 1.0]
    assert warmup_ramp(0, 0) == 1.0


def test_the_knob_leaves_the_keys_of_bases_built_without_it():
    """A base built before the knob existed keeps its cache key; a build cannot take a warm-up (a fine-tune's)."""
    spec = replace(TinySpec(), attn={"variant": "diff_split"})
    warmed = replace(TinySpec(), attn={"variant": "diff_split", "lambda_warmup_steps": 10})
    with pytest.raises(ConfigError, match="lambda_warmup_steps"):
        spec_key(warmed)
    # the key of a diff_split build as it was before the knob (recipe 8): its cache must still be found
    assert (spec_key(spec), stage0_key(spec)) == ("eaa92ed20ce3", "968e2bdf52cb")


class _Tiny(L.LightningModule):
    def __init__(self, model, batch):
        super().__init__()
        self.model, self.batch = model.train(), batch

    def training_step(self, _batch, _index):
        return self.model(**model_inputs(self.batch)).loss

    def configure_optimizers(self):
        return torch.optim.SGD([p for p in self.model.parameters() if p.requires_grad], lr=0.5)


def test_training_ramps_lambda_in_and_the_adapter_keeps_the_ramp(tiny_processor, tiny_batch, tmp_path):
    cfg = settings(FAIR["diff_dup_separate"], warmup=4)
    model = build("gemma", tiny_processor)
    lora = wrap_lora(model, LoraConfig(rank=4, alpha=8.0), apply_attention(model, cfg))
    trainer = L.Trainer(max_steps=6, log_every_n_steps=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[LambdaWarmup(4), LambdaHistory(tmp_path)])
    trainer.fit(_Tiny(lora, tiny_batch), train_dataloaders=torch.utils.data.DataLoader(range(6), batch_size=1))

    history = read_history(tmp_path)
    lam, learned = dict(history["text/layer1"]), dict(history["text/layer1/learned"])
    target = lambda_init_for(1, cfg)
    for step in range(7):  # recorded at each step with that step's ramp
        assert lam[step] == pytest.approx(learned[step] + warmup_ramp(step, 4) * target, abs=1e-6)
    assert learned[0] == 0.0 and learned[6] != 0.0  # lambda's own part trained

    save_adapter(lora, tmp_path / "adapter", {"attn": asdict(cfg), "ffn": asdict(FfnConfig())})
    reloaded = load_adapter(build("gemma", tiny_processor), tmp_path / "adapter")
    assert lambda_values(reloaded)["text/layer1"] == pytest.approx(lam[6], abs=1e-6)  # the ramp of 1, not 0
    inputs = model_inputs(tiny_batch, with_labels=False)
    assert torch.allclose(logits(reloaded, inputs), logits(lora.eval(), inputs), atol=1e-5)
