"""Differential attention variants on a tiny random PaliGemma built with the real transformers classes."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from helpers import sharpen_text_logits, small_spec, tiny_paligemma2
from peft import PeftModel
from safetensors.torch import load_file
from transformers import PaliGemmaForConditionalGeneration
from transformers.masking_utils import AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.models.gemma.modeling_gemma import apply_rotary_pos_emb

from diffpali.attention import VARIANTS, lambda_init_for, split_halves
from diffpali.config import AttnConfig, LoraConfig
from diffpali.data.collate import PaliGemmaCollator, model_inputs
from diffpali.generation import returned_cache
from diffpali.model import wrap_lora
from diffpali.surgery import IMPLEMENTATIONS, apply_attention, attention_modules, ensure_registered
from diffpali.zoo.tiny import build_config

#: Every registered variant, by key, as the attn config that selects it: the tests cover each one.
ALL = {key: dict(variant.selects) for key, variant in VARIANTS.items()}
DIFF = {key: fields for key, fields in ALL.items() if VARIANTS[key].differential}
#: The documented setting that computes exactly the pretrained attention at init.
EXACT = dict(
    variant="diff_dup",
    dup_mode="separate",
    lambda_schedule="constant",
    lambda_init=0.0,
    lambda_pairs="tied",
    branch_noise=0.0,
    head_norm=False,
)


#: The two decoders PaliGemma ships with: Gemma (PaliGemma) and Gemma 2 (PaliGemma 2: soft-capped logits,
#: a sliding window shorter than the test sequences, query_pre_attn_scalar != head_dim, GQA).
DECODERS = ("gemma", "gemma2")


def build_tiny(decoder: str, processor) -> PaliGemmaForConditionalGeneration:
    """A seeded random tiny PaliGemma with the given decoder (fp32, eval mode); the same weights every call."""
    if decoder == "gemma2":
        return tiny_paligemma2(processor, seed=0)
    torch.manual_seed(0)
    return PaliGemmaForConditionalGeneration(build_config(small_spec(), processor)).eval()


@pytest.fixture(params=DECODERS)
def decoder_model(request, tiny_processor):
    """``tiny_model``, once with each decoder."""
    return build_tiny(request.param, tiny_processor)


def attn(**fields) -> AttnConfig:
    cfg = AttnConfig(**fields)
    cfg.validate()
    return cfg


def lora_config() -> LoraConfig:
    """The default LoRA targets: both branches of a branched q_proj/k_proj are adapted."""
    return LoraConfig(rank=4, alpha=8.0)


def converted(model, **fields):
    apply_attention(model, attn(**fields))
    return model


@torch.no_grad()
def logits(model, inputs: dict) -> torch.Tensor:
    return model(**inputs).logits


def scale_values(model, factor: float) -> None:
    """Give the attention outputs the O(1) scale of a trained model (the random init's are ~1e-2,
    where the head norm's eps, not the math, dominates how much lambda leaks through)."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("v_proj.weight"):
                param.mul_(factor)


# ------------------------------------------------------------------------------------------
# 1. vanilla and registration
# ------------------------------------------------------------------------------------------
def test_vanilla_touches_nothing(decoder_model, tiny_batch):
    tiny_model = decoder_model
    untouched = copy.deepcopy(tiny_model)
    inputs = model_inputs(tiny_batch, with_labels=False)
    assert apply_attention(tiny_model, attn(variant="vanilla")) == []
    assert torch.equal(logits(tiny_model, inputs), logits(untouched, inputs))
    assert tiny_model.state_dict().keys() == untouched.state_dict().keys()
    stock = "eager" if tiny_model.config.text_config.model_type == "gemma2" else "sdpa"  # SDPA cannot soft-cap
    assert tiny_model.config.text_config._attn_implementation == stock


def test_registration_is_idempotent_and_includes_masks():
    ensure_registered()
    ensure_registered()
    assert len(IMPLEMENTATIONS) == len(DIFF)
    for name, function in IMPLEMENTATIONS.items():
        assert ALL_ATTENTION_FUNCTIONS[name] is function
        assert name in AttentionMaskInterface._global_mapping  # else transformers builds no mask at all


# ------------------------------------------------------------------------------------------
# 2. fused SDPA path against an eager reference
# ------------------------------------------------------------------------------------------
def rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """HF Gemma's rotary: channel i is rotated with channel i + D/2."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def to_heads(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.view(*x.shape[:2], -1, dim).transpose(1, 2)


def prefix_lm_allowed(batch: dict, window: int | None = None) -> torch.Tensor:
    """(batch, 1, q, k) True where attending is allowed: non-pad keys, causal, bidirectional in the prefix.

    ``window`` (a Gemma 2 sliding layer): the causal part reaches back fewer than ``window`` positions;
    inside the bidirectional prefix the window does not apply (transformers' convention).
    """
    keep = batch["attention_mask"].bool()
    prefix = batch["token_type_ids"] == 0
    steps = torch.arange(keep.shape[1])
    causal = steps[None, :, None] >= steps[None, None, :]
    if window is not None:
        causal = causal & (steps[None, :, None] - steps[None, None, :] < window)
    both_prefix = prefix[:, :, None] & prefix[:, None, :]
    return ((causal | both_prefix) & keep[:, None, :])[:, None]


def reference_attention(module, hidden, rotary, allowed, cfg: AttnConfig, depth: int,
                        softcap: float | None = None) -> torch.Tensor:
    """Each variant written out from its equations: explicit softmax maps, gathered halves, repeated KV heads.

    Gemma 2: logits scaled by query_pre_attn_scalar ** -0.5 (diff_split: (query_pre_attn_scalar / 2) ** -0.5,
    the same sqrt(2) a half-width head gets) and soft-capped, tanh(s / cap) * cap, before each softmax.
    """
    key = next(k for k, v in VARIANTS.items() if all(getattr(cfg, f) == x for f, x in v.selects.items()))
    dim = module.head_dim
    second_query = key in ("diff_dup_separate", "diff_v2")
    q_proj = module.q_proj.branch1 if second_query else module.q_proj
    k_proj = module.k_proj.branch1 if key == "diff_dup_separate" else module.k_proj
    q, k, v = (to_heads(proj(hidden), dim) for proj in (q_proj, k_proj, module.v_proj))
    q2 = to_heads(module.q_proj.branch2(hidden), dim) if second_query else q
    k2 = to_heads(module.k_proj.branch2(hidden), dim) if key == "diff_dup_separate" else k
    if rotary is not None:
        cos, sin = (t.unsqueeze(1) for t in rotary)
        q, k, q2, k2 = (rotate(t, cos, sin) for t in (q, k, q2, k2))
    groups = q.shape[1] // k.shape[1]
    k, k2, v = (t.repeat_interleave(groups, dim=1) for t in (k, k2, v))
    scalar = getattr(module.config, "query_pre_attn_scalar", None) or dim
    scale = scalar**-0.5
    if key == "diff_split":  # half 1: rotary pairs (i, i + D/2) with even i; half 2: odd i
        first = [c for c in range(dim) if (c % (dim // 2)) % 2 == 0]
        second = [c for c in range(dim) if c not in first]
        q, k, q2, k2 = q[..., first], k[..., first], q[..., second], k[..., second]
        scale = (scalar / 2) ** -0.5

    def attention_map(queries, keys):
        scores = queries @ keys.transpose(-1, -2) * scale
        if softcap is not None:
            scores = torch.tanh(scores / softcap) * softcap
        return scores.masked_fill(~allowed, float("-inf")).softmax(-1)

    if key == "vanilla":
        heads = attention_map(q, k) @ v
    elif key == "diff_v2":  # lambda = gate * sigmoid(x W + b), per token and head; no head norm
        lam_module = module.q_proj.diff_lambda
        lam = torch.sigmoid(hidden @ lam_module.proj.weight.T + lam_module.proj.bias) * lam_module.gate
        heads = attention_map(q, k) @ v - lam.transpose(1, 2)[..., None] * (attention_map(q2, k2) @ v)
    else:
        lam_module = module.diff_lambda
        lambda_init = lambda_init_for(depth, cfg)
        lam = (lam_module.lq1 @ lam_module.lk1).exp() - (lam_module.lq2 @ lam_module.lk2).exp() + lambda_init
        heads = (attention_map(q, k) - lam * attention_map(q2, k2)) @ v
        if cfg.head_norm:
            rms = heads.pow(2).mean(-1, keepdim=True).add(1e-5).rsqrt()
            heads = heads * rms * module.diff_norm.weight * (1 - lambda_init)
    out = heads.transpose(1, 2).reshape(*hidden.shape[:2], -1)
    return (module.o_proj if hasattr(module, "o_proj") else module.out_proj)(out)


def randomise_new_parts(model) -> None:
    """Move every new part off its init so the oracle checks it: head-norm weights, V2's lambda."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".diff_norm." in name or ".diff_lambda.proj." in name or ".diff_lambda.gate" in name:
                param.uniform_(0.5, 1.5) if "diff_norm" in name or "gate" in name else param.normal_(0, 0.3)


@pytest.mark.parametrize("variant", ALL)
def test_fused_path_matches_eager_reference(decoder_model, tiny_batch, variant):
    """Every variant on both decoders, every layer of both towers, against the oracle: padding, the prefix-LM mask,
    and on Gemma 2 the soft-cap (made to bite) and the sliding window (shorter than the sequence)."""
    tiny_model = decoder_model
    text_config = tiny_model.config.text_config
    softcap = getattr(text_config, "attn_logit_softcapping", None)
    if softcap is not None:
        sharpen_text_logits(tiny_model, 40.0)
    cfg = attn(**ALL[variant])
    apply_attention(tiny_model, cfg)
    captured = []

    def record(module, args, kwargs, output):
        captured.append((module, kwargs["hidden_states"], kwargs.get("position_embeddings"), output[0]))

    with torch.no_grad():
        randomise_new_parts(tiny_model)
        for tower in ("text", "vision"):
            for _, module in attention_modules(tiny_model, tower):
                module.register_forward_hook(record, with_kwargs=True)
        tiny_model(**model_inputs(tiny_batch, with_labels=False))
        depth_of = {m: d for t in ("text", "vision") for d, (_, m) in enumerate(attention_modules(tiny_model, t))}
        valid = tiny_batch["attention_mask"].bool()
        towers_seen, windows_seen = set(), set()
        for module, hidden, rotary, output in captured:
            text = rotary is not None
            window = getattr(module, "sliding_window", None) if text else None
            allowed = prefix_lm_allowed(tiny_batch, window) if text else torch.ones(1, 1, 1, 1, dtype=torch.bool)
            cap = softcap if text else None
            expected = reference_attention(module, hidden, rotary, allowed, cfg, depth_of[module], cap)
            rows = valid if text else slice(None)  # padded query rows are never read
            torch.testing.assert_close(output[rows], expected[rows], rtol=1e-4, atol=1e-5)
            towers_seen.add(text)
            windows_seen.add(window)
            size = expected[rows].abs().max()
            if cap is not None:  # the soft-cap and the window both change this layer's output
                uncapped = reference_attention(module, hidden, rotary, allowed, cfg, depth_of[module])
                assert (uncapped[rows] - expected[rows]).abs().max() > 0.02 * size
            if window is not None:
                full = reference_attention(module, hidden, rotary, prefix_lm_allowed(tiny_batch), cfg,
                                           depth_of[module], cap)
                assert (full[rows] - expected[rows]).abs().max() > 0.02 * size
    assert towers_seen == {True, False}
    assert windows_seen == ({None} if softcap is None else {None, text_config.sliding_window})


# ------------------------------------------------------------------------------------------
# 3. the mask is not lost
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_future_tokens_stay_invisible(decoder_model, tiny_batch, tiny_processor, variant):
    model = converted(decoder_model, **ALL[variant])
    padded = model_inputs(tiny_batch, with_labels=False)
    full_row = int(tiny_batch["attention_mask"].all(-1).nonzero()[0])
    unpadded = {k: v[full_row : full_row + 1] for k, v in padded.items()}
    replacement = tiny_processor.tokenizer.convert_tokens_to_ids("yes")
    for inputs in (padded, unpadded):
        before = logits(model, inputs)
        ids = inputs["input_ids"].clone()
        ids[:, -1] = torch.where(ids[:, -1] == replacement, replacement + 1, replacement)
        after = logits(model, {**inputs, "input_ids": ids})
        torch.testing.assert_close(after[:, :-1], before[:, :-1], rtol=0, atol=1e-6)
        assert not torch.allclose(after[:, -1], before[:, -1])  # the change itself is visible


@pytest.mark.parametrize("variant", ALL)
def test_token_types_give_the_prefix_lm_mask(decoder_model, tiny_batch, variant):
    model = converted(decoder_model, **ALL[variant])
    inputs = model_inputs(tiny_batch, with_labels=False)
    causal_only = {k: v for k, v in inputs.items() if k != "token_type_ids"}
    assert (logits(model, inputs) - logits(model, causal_only)).abs().max() > 1e-3


# ------------------------------------------------------------------------------------------
# 4. diff_split halves keep the relative-position property of the rotary
# ------------------------------------------------------------------------------------------
def half_scores(rotary_emb, mask: torch.Tensor, starts: list[int], distance: int) -> torch.Tensor:
    """q.k on one half for the same content vectors at positions (p, p + distance), for each p."""
    torch.manual_seed(3)
    dim = mask.shape[0]
    q, k = torch.randn(2, 1, 1, 1, dim).unbind(0)
    scores = []
    for start in starts:
        positions = torch.tensor([[start, start + distance]])
        cos, sin = rotary_emb(torch.zeros(1, 2, dim), positions)
        q_rot, k_rot = apply_rotary_pos_emb(q.expand(1, 1, 2, dim), k.expand(1, 1, 2, dim), cos, sin)
        scores.append((q_rot[0, 0, 0] * mask * k_rot[0, 0, 1]).sum())
    return torch.stack(scores)


def test_split_halves_depend_only_on_position_difference(tiny_model):
    rotary_emb = tiny_model.model.language_model.rotary_emb
    dim = tiny_model.config.text_config.head_dim
    starts = [0, 3, 17, 40]
    first, second = split_halves(dim, torch.zeros(dim))
    assert torch.equal(first + second, torch.ones(dim)) and first.sum() == dim // 2
    for half in (first, second):
        scores = half_scores(rotary_emb, half, starts, distance=5)
        torch.testing.assert_close(scores, scores[:1].expand_as(scores), rtol=0, atol=1e-5)
    contiguous = (torch.arange(dim) < dim // 2).float()  # the pitfall: cuts every rotary pair
    scores = half_scores(rotary_emb, contiguous, starts, distance=5)
    assert (scores - scores[0]).abs().max() > 1e-2


# ------------------------------------------------------------------------------------------
# 5. diff_dup shared is inert; separate is not
# ------------------------------------------------------------------------------------------
def test_shared_dup_is_one_minus_lambda_times_vanilla(tiny_model):
    model = converted(tiny_model, **DIFF["diff_dup_shared"])
    _, module = attention_modules(model, "text")[0]
    before_norm = []
    module.diff_norm.register_forward_pre_hook(lambda _, args: before_norm.append(args[0]))
    torch.manual_seed(0)
    query, key, value = torch.randn(2, 4, 7, 16), torch.randn(2, 1, 7, 16), torch.randn(2, 1, 7, 16)
    with torch.no_grad():
        out, _ = IMPLEMENTATIONS["diffpali_diff_dup_shared"](module, query, key, value, None, scaling=module.scaling)
        vanilla, _ = ALL_ATTENTION_FUNCTIONS["sdpa"](module, query, key, value, None, scaling=module.scaling)
        lam = module.diff_lambda()
    assert abs(lam.item() - 0.2) > 1e-4  # a lambda of its own, not just lambda_init
    torch.testing.assert_close(before_norm[0], (1 - lam) * vanilla)
    # The norm cancels (1 - lambda), up to its eps: lambda no longer changes the output.
    torch.testing.assert_close(out, module.diff_norm(vanilla), rtol=1e-3, atol=1e-4)


def lambda_gradients(model, batch) -> torch.Tensor:
    """dL/dlambda of every converted layer, read off the lambda modules' outputs."""
    outputs = []

    def keep(module, args, out):
        out.retain_grad()
        outputs.append(out)

    handles = [m.register_forward_hook(keep) for m in model.modules() if type(m).__name__ == "DiffLambda"]
    model.zero_grad()
    model(**model_inputs(batch)).loss.backward()
    for handle in handles:
        handle.remove()
    return torch.stack([out.grad for out in outputs])


def lora_b_grad(model, tower_prefix: str, projection: str) -> float:
    name = f"{tower_prefix}.layers.0.self_attn.{projection}.lora_B.default.weight"
    return dict(model.named_parameters())[f"base_model.model.model.{name}"].grad.norm().item()


def test_lambda_and_both_branches_get_gradients_only_when_separate(tiny_model, tiny_batch):
    scale_values(tiny_model, 100.0)
    no_norm = converted(copy.deepcopy(tiny_model), **DIFF["diff_dup_shared"], head_norm=False)
    reference = lambda_gradients(no_norm, tiny_batch)
    scale = reference.abs().max()  # how much lambda matters when no norm cancels it
    after_step = {}
    for mode in ("shared", "separate"):
        model = converted(copy.deepcopy(tiny_model), variant="diff_dup", dup_mode=mode)
        torch.manual_seed(1)
        peft_model = wrap_lora(model, lora_config(), ["diff_lambda", "diff_norm"])
        optimizer = torch.optim.Adam([p for p in peft_model.parameters() if p.requires_grad], lr=1e-2)
        at_init = lambda_gradients(peft_model, tiny_batch)
        if mode == "shared":
            assert at_init.abs().max() < 1e-5 * scale
        else:
            for tower in ("language_model", "vision_tower.encoder"):
                # Branch 2's gradient is -lambda times branch 1's at init: both real, neither ~0.
                first, second = (lora_b_grad(peft_model, tower, f"q_proj.branch{b}") for b in (1, 2))
                assert first > 1e-4 and second > 0.02 * first
        optimizer.step()
        after_step[mode] = lambda_gradients(peft_model, tiny_batch).abs().max()
    assert after_step["shared"] < 1e-5 * scale  # stays inert whatever the training does
    assert after_step["separate"] > 1e-3 * scale  # the branches diverged and lambda matters


# ------------------------------------------------------------------------------------------
# 6. the documented exact setting, 7. lambda_init schedule
# ------------------------------------------------------------------------------------------
def test_exact_setting_reproduces_pretrained_logits(tiny_model, tiny_batch):
    inputs = model_inputs(tiny_batch, with_labels=False)
    pretrained = logits(tiny_model, inputs)
    model = converted(tiny_model, **EXACT)
    assert type(attention_modules(model, "text")[0][1].q_proj).__name__ == "BranchedProjection"
    torch.testing.assert_close(logits(model, inputs), pretrained, rtol=0, atol=1e-6)


def test_exact_setting_still_trains_lambda(tiny_model, tiny_batch):
    """Tied pairs give lambda = 0 exactly at init, yet a real gradient (std 0 would freeze it)."""
    pristine = copy.deepcopy(tiny_model)
    model = converted(tiny_model, **EXACT)
    lambdas = [m.diff_lambda() for _, m in attention_modules(model, "text")]
    assert all(lam.item() == 0.0 for lam in lambdas)
    grads = lambda_gradients(model, tiny_batch)
    assert grads.abs().min() > 0
    frozen = converted(pristine, **{**EXACT, "lambda_pairs": "independent", "lambda_std": 0.0})
    vectors = [p for n, p in frozen.named_parameters() if ".diff_lambda." in n]
    frozen.zero_grad()
    frozen(**model_inputs(tiny_batch)).loss.backward()
    assert all(v.grad is None or v.grad.abs().max() == 0 for v in vectors)


def test_lambda_init_schedule(tiny_model):
    paper = attn(variant="diff_dup")
    assert [round(lambda_init_for(i, paper), 4) for i in range(3)] == [0.2, 0.3555, 0.4707]
    zero_based = attn(variant="diff_dup", layer_index_base=0)
    assert lambda_init_for(0, zero_based) == pytest.approx(0.8 - 0.6 * math.exp(0.3))
    assert lambda_init_for(1, zero_based) == pytest.approx(0.2)
    constant = attn(variant="diff_dup", lambda_schedule="constant", lambda_init=0.35)
    assert {lambda_init_for(i, constant) for i in range(5)} == {0.35}
    apply_attention(tiny_model, paper)
    for tower in ("text", "vision"):
        got = [m.diff_lambda.lambda_init for _, m in attention_modules(tiny_model, tower)]
        assert got == pytest.approx([0.2, 0.8 - 0.6 * math.exp(-0.3)])


# ------------------------------------------------------------------------------------------
# 8. generation with and without KV cache
# ------------------------------------------------------------------------------------------
def assert_cache_changes_nothing(model, processor):
    """Greedy generation on a left-padded batch gives the same tokens and scores with the KV cache and without."""
    from PIL import Image

    prompts = ["answer en what color is the shape?", "caption en", "answer en is there a red circle?"]
    colors = [(255, 0, 0), (0, 0, 255), (0, 128, 0)]
    examples = [{"image": Image.new("RGB", (40, 40), c), "prefix": p} for c, p in zip(colors, prompts)]
    inputs = model_inputs(PaliGemmaCollator(processor, train=False)(examples), with_labels=False)
    assert "token_type_ids" in inputs and not inputs["attention_mask"].all()  # left padding present
    kwargs = dict(max_new_tokens=4, do_sample=False, output_scores=True, return_dict_in_generate=True)
    cached = model.generate(**inputs, use_cache=True, **kwargs)
    uncached = model.generate(**inputs, use_cache=False, **kwargs)
    assert torch.equal(cached.sequences, uncached.sequences)
    torch.testing.assert_close(torch.stack(cached.scores), torch.stack(uncached.scores), rtol=1e-4, atol=1e-5)
    return cached


@pytest.mark.parametrize("variant", ALL)
def test_generation_with_cache_matches_without(decoder_model, tiny_processor, variant):
    """Gemma 2's cache is hybrid (a sliding-window layer, then a full one): the prompts outgrow the window."""
    model = converted(decoder_model, **ALL[variant])
    cached = assert_cache_changes_nothing(model, tiny_processor)
    kv_heads = decoder_model.config.text_config.num_key_value_heads
    for cache in returned_cache(cached).layers:
        if variant == "diff_dup_separate":  # K2 rides in the stock cache as extra KV heads
            assert cache.keys.shape[1] == 2 * cache.values.shape[1]
        else:  # every other variant caches exactly vanilla's keys and values (diff_v2 included)
            assert cache.keys.shape[1] == cache.values.shape[1] == kv_heads
    window = getattr(decoder_model.config.text_config, "sliding_window", None)
    if window is not None:
        sliding, full = returned_cache(cached).layers
        assert sliding.keys.shape[2] < full.keys.shape[2]  # the window's layer keeps fewer positions


# ------------------------------------------------------------------------------------------
# 9. LoRA training, save and reload
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("variant", ALL)
def test_lora_trains_saves_and_reloads(decoder_model, tiny_batch, tiny_processor, tmp_path, variant):
    tiny_model = decoder_model
    decoder = tiny_model.config.text_config.model_type
    cfg = attn(**ALL[variant])
    saved = apply_attention(tiny_model, cfg)
    assert saved == {"vanilla": [], "diff_v2": ["diff_lambda"]}.get(variant, ["diff_lambda", "diff_norm"])
    torch.manual_seed(1)
    model = wrap_lora(tiny_model, lora_config(), saved).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(5):
        loss = model(**model_inputs(tiny_batch)).loss
        losses.append(loss.item())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert losses[-1] < losses[0] - 0.05

    model.eval()
    inputs = model_inputs(tiny_batch, with_labels=False)
    trained = logits(model, inputs)
    model.save_pretrained(tmp_path)
    keys = load_file(tmp_path / "adapter_model.safetensors").keys()
    expected = {"vanilla": set(), "diff_v2": {"diff_lambda"}}.get(variant, {"diff_lambda", "diff_norm"})
    expected |= {"q_proj.branch2.lora_A", "k_proj.branch2.lora_B"} if variant == "diff_dup_separate" else set()
    expected |= {"q_proj.branch2.lora_A", "q_proj.diff_lambda"} if variant == "diff_v2" else set()
    assert all(any(part in key for key in keys) for part in expected), sorted(keys)[:8]

    fresh = build_tiny(decoder, tiny_processor)  # the fixture's base, rebuilt
    torch.manual_seed(1234)  # a different lambda init: the saved one must replace it
    apply_attention(fresh, cfg)
    reloaded = PeftModel.from_pretrained(fresh, str(tmp_path))
    assert torch.equal(logits(reloaded, inputs), trained)


# ------------------------------------------------------------------------------------------
# 10. towers, and bf16 autocast
# ------------------------------------------------------------------------------------------
def test_towers_are_independent(tiny_model, tiny_batch):
    pixels = tiny_batch["pixel_values"]
    embeds = torch.randn(2, 9, tiny_model.config.text_config.hidden_size)

    @torch.no_grad()
    def tower_outputs(model):
        vision = model.model.vision_tower(pixel_values=pixels).last_hidden_state
        text = model.model.language_model(inputs_embeds=embeds).last_hidden_state
        return vision, text

    vision0, text0 = tower_outputs(tiny_model)
    text_only = converted(copy.deepcopy(tiny_model), variant="diff_dup", towers=["text"])
    vision, text = tower_outputs(text_only)
    assert torch.equal(vision, vision0) and not torch.allclose(text, text0)
    assert text_only.config.vision_config._attn_implementation == "sdpa"
    vision_only = converted(copy.deepcopy(tiny_model), variant="diff_split", towers=["vision"])
    vision, text = tower_outputs(vision_only)
    assert torch.equal(text, text0) and not torch.allclose(vision, vision0)
    assert not any(hasattr(m, "diff_lambda") for _, m in attention_modules(vision_only, "text"))


def test_bf16_autocast_keeps_lambda_and_norm_in_fp32(tiny_model, tiny_batch):
    model = converted(tiny_model, **DIFF["diff_dup_separate"])
    dtypes = []
    for _, module in attention_modules(model, "text"):
        module.diff_lambda.register_forward_hook(lambda _, __, out: dtypes.append(out.dtype))
        module.diff_norm.register_forward_hook(lambda _, __, out: dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = logits(model, model_inputs(tiny_batch, with_labels=False))
    assert dtypes and set(dtypes) == {torch.float32}
    assert torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------
# 11. DIFF V2: retrofit initialisation
# ------------------------------------------------------------------------------------------
def test_v2_exact_init_reproduces_pretrained_logits_and_lambda_still_learns(tiny_model, tiny_batch):
    inputs = model_inputs(tiny_batch, with_labels=False)
    pretrained = logits(tiny_model, inputs)
    model = converted(tiny_model, variant="diff_v2", v2_lambda_init="exact", branch_noise=1e-2)
    torch.testing.assert_close(logits(model, inputs), pretrained, rtol=0, atol=1e-6)
    model.zero_grad()
    model(**model_inputs(tiny_batch)).loss.backward()
    gates = [m.q_proj.diff_lambda.gate.grad for t in ("text", "vision") for _, m in attention_modules(model, t)]
    assert all(g is not None and g.abs().min() > 0 for g in gates)  # every head's lambda leaves 0 at step one


def test_v2_plain_init_is_the_authors_half_lambda(tiny_model, tiny_batch):
    inputs = model_inputs(tiny_batch, with_labels=False)
    pretrained = logits(tiny_model, inputs)
    model = converted(tiny_model, variant="diff_v2", v2_lambda_init="plain", branch_noise=0.0)
    logits(model, inputs)
    for tower in ("text", "vision"):
        for _, module in attention_modules(model, tower):
            assert torch.all(module.q_proj.last_lambda == 0.5)  # sigmoid(0), every token and head
    assert not torch.allclose(logits(model, inputs), pretrained, atol=1e-3)  # A V - 0.5 A V: the base changes


def test_v2_pairs_share_their_group_key_and_value(tiny_model):
    """Query heads 2i and 2i+1 come from head i's projection and its copy, and attend with head i's K and V."""
    model = converted(tiny_model, variant="diff_v2", branch_noise=0.0)
    _, module = attention_modules(model, "vision")[0]  # SigLIP: one KV head per query head
    hidden = torch.randn(1, 5, module.q_proj.branch1.in_features)
    heads = module.q_proj(hidden).view(1, 5, -1, module.head_dim)
    original = module.q_proj.branch1(hidden).view(1, 5, -1, module.head_dim)
    assert torch.equal(heads[:, :, 0::2], original) and torch.equal(heads[:, :, 1::2], original)
    assert module.num_key_value_groups == 2  # 2H query heads over H key/value heads
    _, text = attention_modules(model, "text")[0]  # Gemma: one KV head for all 2H query heads
    assert text.num_key_value_groups == 2 * model.config.text_config.num_attention_heads


# ------------------------------------------------------------------------------------------
# 12. a new variant is one class (plus its YAML file and an oracle branch)
# ------------------------------------------------------------------------------------------
def test_a_throwaway_variant_plugs_in_through_the_registry(tiny_model, tiny_processor, tiny_batch, monkeypatch):
    """The original Differential Transformer's layout on pretrained heads: head pairs as the two branches."""
    from omegaconf import OmegaConf

    from diffpali.attention import AttentionVariant, differential
    from diffpali.config import TrainConfig, to_typed
    from diffpali.evals.attention.recorder import record_attention

    class DiffPair(AttentionVariant):
        selects = {"variant": "diff_pair"}
        label = "yes (head pairs)"

        @staticmethod
        def kernel(module, query, key, value, mask, scaling, attend):
            out = attend(query, key, value, mask, scaling)       # (B, T, H, D)
            first, second = out[:, :, 0::2], out[:, :, 1::2]     # heads 2i and 2i+1 as the two branches
            return differential(module, first.repeat_interleave(2, 2), second.repeat_interleave(2, 2))

        @staticmethod
        def combine_maps(module, maps):
            attn = maps[0]                                       # (B, H, Tq, Tk), the one map attend made
            pairs = [attn[:, 0::2].repeat_interleave(2, 1), attn[:, 1::2].repeat_interleave(2, 1)]
            return AttentionVariant.combine_maps(module, pairs)

    monkeypatch.setitem(VARIANTS, "diff_pair", DiffPair)
    cfg = to_typed(OmegaConf.create({"attn": {"variant": "diff_pair"}}), TrainConfig)  # a valid choice now
    assert apply_attention(tiny_model, cfg.attn) == ["diff_lambda", "diff_norm"]
    assert tiny_model.config.text_config._attn_implementation == "diffpali_diff_pair"
    assert_cache_changes_nothing(tiny_model, tiny_processor)
    # the attention recorder runs the same kernel with an eager attend: same logits, and the pairs' maps
    inputs = model_inputs(tiny_batch, with_labels=False)
    with torch.no_grad():
        fast = tiny_model(**inputs).logits
        with record_attention(tiny_model) as recorder:
            recorded = tiny_model(**inputs).logits
    torch.testing.assert_close(recorded, fast, rtol=1e-4, atol=1e-5)
    layers = recorder.take()
    assert len(layers) == 2 and all(maps.branches is not None for maps in layers.values())
    first, second = layers[0].branches
    torch.testing.assert_close(layers[0].effective, first - layers[0].lam * second)
    monkeypatch.delitem(VARIANTS, "diff_pair")
    with pytest.raises(Exception, match="attn.variant='diff_pair': must be one of"):
        to_typed(OmegaConf.create({"attn": {"variant": "diff_pair"}}), TrainConfig)
