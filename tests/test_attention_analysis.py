"""Attention analysis: shares equal hand-built values, cells map to the right patches, the recorder
leaves the model's output and its fast path alone, the plots are drawn, ``eval=attention`` runs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import CORPUS, sharpen_text_logits, small_spec, tiny_paligemma2
from PIL import Image

from diffpali.attention import VARIANTS as REGISTRY
from diffpali.config import AttnConfig, EvaluateConfig
from diffpali.data.collate import PaliGemmaCollator, model_inputs
from diffpali.data.grids import stitch
from diffpali.evals.attention.layout import SampleLayout, cell_patches, sample_layout, straddling_patches
from diffpali.evals.attention.plots import (
    OverlayItem,
    lambda_trajectories,
    layer_curves,
    overlay_figure,
    read_overlays,
)
from diffpali.evals.attention.recorder import RECORD_IMPLEMENTATION, record_attention, text_layers
from diffpali.evals.attention.shares import ShareAccumulator, row_shares
from diffpali.lambda_history import LambdaHistory, read_history
from diffpali.paths import LAMBDA_HISTORY_FILE
from diffpali.report.figures import compare_overlays
from diffpali.surgery import IMPLEMENTATIONS, apply_attention, lambda_values

#: Every registered variant (DIFF V2 with lambda away from its exact-init 0, so its maps differ from vanilla's).
VARIANTS = [AttnConfig(**v.selects) for v in REGISTRY.values()]


def _label(cfg: AttnConfig) -> str:
    return "_".join(str(getattr(cfg, k)) for k in ("variant", "dup_mode")
                    if k == "variant" or cfg.variant == "diff_dup")


@pytest.fixture(scope="module")
def processor64():
    """The embedded default's geometry: 64 px input, 16 px patches, 4 x 4 image tokens."""
    from diffpali.zoo.tiny import build_processor, train_tokenizer

    spec = small_spec(image_size=64)
    return build_processor(train_tokenizer(CORPUS, spec.text.vocab_size), spec)


def _model(processor, attn: AttnConfig | None = None, decoder: str = "gemma"):
    """Gemma: the tiny spec's decoder. Gemma 2: ``tiny_paligemma2``, its logits sharpened past the soft-cap."""
    from transformers import PaliGemmaForConditionalGeneration

    from diffpali.zoo.tiny import build_config

    if decoder == "gemma2":
        model = tiny_paligemma2(processor)
        sharpen_text_logits(model)
    else:
        torch.manual_seed(0)
        model = PaliGemmaForConditionalGeneration(build_config(small_spec(image_size=64), processor)).eval()
    if attn is not None:
        apply_attention(model, attn)
    return model


def _haystack(colors: list[str]) -> Image.Image:
    return stitch([Image.new("RGB", (32, 32), c) for c in colors], 2, 32)


def _batch(processor, prefixes=("Caption: a red circle. Where is the caption? Top or Bottom?", "caption en"),
           suffixes=("top", "a blue triangle")):
    examples = [{"image": _haystack(["red", "blue", "green", "white"]), "prefix": p, "suffix": s}
                for p, s in zip(prefixes, suffixes)]
    return PaliGemmaCollator(processor, train=True)(examples)


# --------------------------------------------------------------------------------------------
# geometry: which tokens show which cell
# --------------------------------------------------------------------------------------------
def test_painting_one_cell_changes_exactly_its_patch_tokens(processor64):
    """By construction: paint one cell of a stitched image, push both images through the real
    processor and SigLIP's patch embedding, and see which image tokens change."""
    model = _model(processor64)
    embed = model.model.vision_tower.embeddings
    cells = cell_patches(64, 16, 2)
    base = _haystack(["gray"] * 4)
    pixels = lambda im: processor64.image_processor(im, return_tensors="pt")["pixel_values"]  # noqa: E731
    with torch.no_grad():
        reference = embed(pixels(base))[0]
        for k in range(4):
            painted = _haystack(["red" if j == k else "gray" for j in range(4)])
            changed = ((embed(pixels(painted))[0] - reference).abs().amax(-1) > 1e-6).nonzero().flatten().tolist()
            assert changed == sorted(cells[k]), f"cell {k}"
    assert cells == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]


def test_cells_partition_the_patches_and_straddling_is_counted():
    for size, patch, grid in [(64, 16, 2), (224, 14, 3), (48, 16, 2), (224, 14, 4)]:
        cells = cell_patches(size, patch, grid)
        side = size // patch
        assert sorted(i for c in cells for i in c) == list(range(side * side))
    assert straddling_patches(64, 16, 2) == 0 and straddling_patches(224, 14, 4) == 0
    assert straddling_patches(48, 16, 2) == 9 - 4  # the middle row and column of a 3 x 3 raster cross the border
    # centre rule: a 3 x 3 raster's middle patches have their centre on the border and go to the later cell
    assert cell_patches(48, 16, 2)[0] == [0] and cell_patches(48, 16, 2)[3] == [4, 5, 7, 8]
    with pytest.raises(ValueError, match="multiple of the patch size"):
        cell_patches(50, 16, 2)


def test_layout_groups_partition_the_keys_and_rows_precede_the_answer(processor64):
    batch = _batch(processor64)
    image_id = processor64.image_token_id
    for b, target in enumerate([(1, 1, 2), (1, 2, 1)]):
        layout = sample_layout(batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b],
                               image_token_id=image_id, tokens_per_image=16, cells=cell_patches(64, 16, 2),
                               target=target, grid=2, eos_token_id=processor64.tokenizer.eos_token_id)
        ids = batch["input_ids"][b]
        valid = batch["attention_mask"][b].nonzero().flatten().tolist()
        groups = [layout.needle.tolist(), layout.distractor.tolist(), layout.text.tolist()]
        assert sorted(sum(groups, [])) == valid
        image_positions = (ids == image_id).nonzero().flatten()
        needle_cell = cell_patches(64, 16, 2)[(target[1] - 1) * 2 + target[2] - 1]
        assert layout.needle.tolist() == image_positions[needle_cell].tolist()
        answer = [p for p in valid if batch["labels"][b, p] != -100 and ids[p] != processor64.tokenizer.eos_token_id]
        assert layout.rows.tolist() == [p - 1 for p in answer]
        assert batch["token_type_ids"][b, layout.rows[0]] == 0  # the first row is the last prompt token
        prompt = [p for p in valid if batch["token_type_ids"][b, p] == 0 and ids[p] != image_id]
        assert layout.prompt_rows.tolist() == prompt and prompt[-1] == layout.rows[0]
    with pytest.raises(ValueError, match="no image 2"):
        sample_layout(batch["input_ids"][0], batch["attention_mask"][0], batch["labels"][0], image_token_id=image_id,
                      tokens_per_image=16, cells=cell_patches(64, 16, 2), target=(2, 1, 1), grid=2, eos_token_id=None)


# --------------------------------------------------------------------------------------------
# shares equal hand-built values
# --------------------------------------------------------------------------------------------
def test_uniform_attention_through_the_real_model_gives_the_counted_shares(processor64):
    """With every text query projection zeroed, each row attends uniformly to the keys PaliGemma's
    mask lets it see (all of the prefix, plus the answer up to itself): the shares are counts."""
    model = _model(processor64)
    for layer in text_layers(model):
        torch.nn.init.zeros_(layer.q_proj.weight)
    batch = _batch(processor64)
    with torch.no_grad(), record_attention(model) as recorder:
        model(**model_inputs(batch, with_labels=False), use_cache=False)
        layers = recorder.take()
    assert sorted(layers) == [0, 1]
    for b, target in enumerate([(1, 2, 2), (1, 1, 1)]):
        layout = sample_layout(batch["input_ids"][b], batch["attention_mask"][b], batch["labels"][b],
                               image_token_id=processor64.image_token_id, tokens_per_image=16,
                               cells=cell_patches(64, 16, 2), target=target, grid=2,
                               eos_token_id=processor64.tokenizer.eos_token_id)
        prefix = batch["token_type_ids"][b] == 0
        valid = batch["attention_mask"][b].bool()

        def counted(rows: torch.Tensor, valid=valid, prefix=prefix, layout=layout) -> torch.Tensor:
            expected = []
            for r in rows.tolist():
                visible = valid & (prefix | (torch.arange(len(valid)) <= r))
                counts = [visible[g].sum().item() for g in (layout.needle, layout.distractor, layout.text)]
                expected.append([c / visible.sum().item() for c in counts])
            return torch.tensor(expected).mean(0)

        answer, prompt = counted(layout.rows), counted(layout.prompt_rows)
        assert answer[0] > 0 and len(layout.rows) >= 1
        for maps in layers.values():
            shares = row_shares(maps.effective[b], layout)
            assert torch.allclose(shares, answer.expand_as(shares), atol=1e-6)
            shares = row_shares(maps.effective[b], layout, layout.prompt_rows)
            assert torch.allclose(shares, prompt.expand_as(shares), atol=1e-6)


def _peaked_qk(length: int, hot: list[int], heads: int, dim: int, strength: float) -> tuple[torch.Tensor, torch.Tensor]:
    query = torch.zeros(1, heads, length, dim)
    query[..., 0] = strength
    key = torch.zeros(1, 1, length, dim)
    key[0, 0, hot, 0] = 1.0
    return query, key


def test_differential_shares_equal_the_closed_form(processor64):
    """A real diff_dup (separate) attention layer fed queries/keys whose two branches put known mass
    on the needle (branch 1) and on the distractors (branch 2), with lambda = lambda_init exactly."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = _model(processor64, AttnConfig(variant="diff_dup", dup_mode="separate"))
    module = text_layers(model)[1]
    lam_module = module.diff_lambda
    for p in (lam_module.lq1, lam_module.lk1, lam_module.lq2, lam_module.lk2):
        torch.nn.init.zeros_(p)  # exp(0) - exp(0) = 0: lambda = lambda_init
    lam = lam_module.lambda_init
    heads, dim, length = module.config.num_attention_heads, module.head_dim, 12
    needle, distractor, text = [0, 1], [2, 3, 4, 5, 6, 7], [8, 9, 10, 11]
    a, c = 3.0, 2.0  # branch 1: score a on the needle; branch 2: score c on the distractors
    q1, k1 = _peaked_qk(length, needle, heads, dim, a / module.scaling)
    q2, k2 = _peaked_qk(length, distractor, heads, dim, c / module.scaling)
    value = torch.randn(1, 1, length, dim)
    mask = torch.ones(1, 1, length, length, dtype=torch.bool)
    layout = SampleLayout(torch.tensor(needle), torch.tensor(distractor), torch.tensor(text),
                          rows=torch.tensor([9, 10, 11]), prompt_rows=torch.tensor([8]), image_tokens=torch.arange(8))
    with record_attention(model) as recorder:
        twin = ALL_ATTENTION_FUNCTIONS[RECORD_IMPLEMENTATION]
        output, _ = twin(module, torch.cat([q1, q2], 1), torch.cat([k1, k2], 1), value, mask, scaling=module.scaling)
        maps = recorder.take()[1]
    fast, _ = IMPLEMENTATIONS["diffpali_diff_dup_separate"](module, torch.cat([q1, q2], 1), torch.cat([k1, k2], 1),
                                                            value, mask, scaling=module.scaling)
    assert torch.allclose(output, fast, atol=1e-5)
    z1 = 2 * math.exp(a) + 10
    m1 = torch.tensor([2 * math.exp(a) / z1, 6 / z1, 4 / z1])
    z2 = 6 * math.exp(c) + 6
    m2 = torch.tensor([2 / z2, 6 * math.exp(c) / z2, 4 / z2])
    assert maps.lam == pytest.approx(lam)
    assert torch.allclose(row_shares(maps.branches[0][0], layout), m1.expand(heads, 3), atol=1e-6)
    assert torch.allclose(row_shares(maps.branches[1][0], layout), m2.expand(heads, 3), atol=1e-6)
    combined = (m1 - lam * m2) / (1 - lam)
    assert combined[1] < 0  # the second branch takes more from the distractors than the first gives
    assert torch.allclose(row_shares(maps.effective[0], layout), combined.expand(heads, 3).float(), atol=1e-6)


def test_accumulator_means_sems_and_needle_of_image_are_hand_computed():
    acc = ShareAccumulator()
    acc.add(0, "", torch.tensor([[0.5, 0.3, 0.2], [0.3, 0.5, 0.2]]))  # sample 1: head means 0.4, 0.4, 0.2
    acc.add(0, "", torch.tensor([[0.2, 0.2, 0.6], [0.2, 0.2, 0.6]]))  # sample 2: 0.2, 0.2, 0.6
    acc.add(0, "branch1", torch.tensor([[1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    acc.lambdas[0] = 0.2
    m = acc.metrics("p")
    assert m["p/layer0/needle"] == pytest.approx(0.3) and m["p/layer0/text"] == pytest.approx(0.4)
    assert m["p/layer0/needle_sem"] == pytest.approx(math.sqrt(0.02) / math.sqrt(2))  # std of (0.4, 0.2) / sqrt(2)
    assert m["p/layer0/needle_of_image"] == pytest.approx(0.5)
    assert m["p/layer0/head0/needle"] == pytest.approx(0.35) and m["p/layer0/head1/distractor"] == pytest.approx(0.35)
    assert m["p/layer0/branch1/needle"] == 1.0 and m["p/layer0/lambda"] == 0.2
    assert m["p/mean/needle"] == pytest.approx(0.3)
    paired = ShareAccumulator()  # two questions about one haystack count once in the standard error
    for sample, needle in [(7, 0.4), (7, 0.2), (8, 0.6), (8, 0.6)]:
        paired.add(0, "", torch.tensor([[needle, 0.0, 1 - needle]]), sample)
    m2 = paired.metrics("p")
    assert m2["p/layer0/needle"] == pytest.approx(0.45)
    assert m2["p/layer0/needle_sem"] == pytest.approx(0.15 * math.sqrt(2) / math.sqrt(2))  # std of (0.3, 0.6) / sqrt(2)
    acc.add(1, "", torch.tensor([[1e-9, 2e-9, 1.0]]))  # a layer whose rows all but ignore the image
    m = acc.metrics("p")
    assert m["p/layer1/needle_of_image"] is None and m["p/mean/needle_of_image"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------
# the recorder leaves the model alone
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("decoder", ["gemma", "gemma2"])
@pytest.mark.parametrize("attn", VARIANTS, ids=_label)
def test_recording_keeps_the_logits_and_restores_the_fast_path(processor64, attn, decoder):
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    model = _model(processor64, attn, decoder)
    original = model.config.text_config._attn_implementation
    kernel = ALL_ATTENTION_FUNCTIONS.get(original)  # None for "eager", the stock default
    batch = _batch(processor64)
    inputs = model_inputs(batch, with_labels=False)
    with torch.no_grad():
        plain = model(**inputs, use_cache=False).logits
        with record_attention(model) as recorder:
            assert model.config.text_config._attn_implementation == RECORD_IMPLEMENTATION
            recorded = model(**inputs, use_cache=False).logits
            layers = recorder.take()
        after = model(**inputs, use_cache=False).logits
    valid = batch["attention_mask"].bool()
    assert torch.allclose(plain[valid], recorded[valid], atol=1e-5)
    assert torch.equal(plain, after)
    assert model.config.text_config._attn_implementation == original
    assert ALL_ATTENTION_FUNCTIONS.get(original) is kernel
    assert model.config.vision_config._attn_implementation != RECORD_IMPLEMENTATION
    for maps in layers.values():
        sums = maps.effective.sum(-1).transpose(1, 2)[valid]  # (valid queries, heads)
        if isinstance(maps.lam, torch.Tensor):  # DIFF V2: lambda per head and query token
            expected = (1.0 - maps.lam).transpose(1, 2)[valid]
        else:
            expected = torch.full_like(sums, 1.0 if maps.lam is None else 1.0 - maps.lam)
        assert torch.allclose(sums, expected, atol=1e-5)
        assert (maps.lam is None) == (attn.variant == "vanilla")


def test_the_recorder_sees_v2s_two_maps_and_its_lambda_per_token(processor64):
    model = _model(processor64, AttnConfig(variant="diff_v2"))
    with torch.no_grad():
        for module in text_layers(model):
            module.q_proj.diff_lambda.proj.weight.normal_(0, 0.5)
            module.q_proj.diff_lambda.gate.fill_(1.0)
    batch = _batch(processor64)
    with torch.no_grad(), record_attention(model) as recorder:
        model(**model_inputs(batch, with_labels=False), use_cache=False)
        layers = recorder.take()
    heads = model.config.text_config.num_attention_heads
    for depth, maps in layers.items():
        attn1, attn2 = maps.branches
        assert attn1.shape[1] == attn2.shape[1] == heads and not torch.allclose(attn1, attn2)
        expected_lambda = text_layers(model)[depth].q_proj.last_lambda.transpose(1, 2)  # (B, H, T)
        assert maps.lam.shape == expected_lambda.shape and torch.equal(maps.lam, expected_lambda)
        assert maps.lam.std() > 0  # it varies by token
        torch.testing.assert_close(maps.effective, attn1 - maps.lam[..., None] * attn2)


def test_recording_works_through_peft_and_refuses_to_nest(processor64):
    from diffpali.config import LoraConfig
    from diffpali.model import wrap_lora

    model = _model(processor64)
    names = apply_attention(model, AttnConfig(variant="diff_dup", dup_mode="separate"))
    peft_model = wrap_lora(model, LoraConfig(), names).eval()
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.05)  # a trained-looking adapter, not the zero init
    inputs = model_inputs(_batch(processor64), with_labels=False)
    with torch.no_grad():
        plain = peft_model(**inputs, use_cache=False).logits
        with record_attention(peft_model) as recorder:
            with pytest.raises(RuntimeError, match="already active"):
                with record_attention(peft_model):
                    pass
            recorded = peft_model(**inputs, use_cache=False).logits
            assert sorted(recorder.take()) == [0, 1]
    assert torch.allclose(plain, recorded, atol=1e-5)


# --------------------------------------------------------------------------------------------
# pictures, lambda history, the evaluate.py task
# --------------------------------------------------------------------------------------------
def _not_blank(path) -> None:
    assert path.is_file() and path.stat().st_size > 2000
    with Image.open(path) as im:
        assert im.width > 200 and len(set(im.convert("RGB").getdata())) > 20


def test_lambda_history_is_recorded_during_real_training_and_drawn(processor64, tmp_path):
    import lightning as L

    model = _model(processor64, AttnConfig(variant="diff_split"))
    batch = _batch(processor64)

    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = model.train()

        def training_step(self, _batch, _index):
            return self.model(**model_inputs(batch)).loss

        def configure_optimizers(self):
            return torch.optim.SGD(self.model.parameters(), lr=0.5)

    trainer = L.Trainer(max_steps=4, log_every_n_steps=2, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, callbacks=[LambdaHistory(tmp_path)])
    trainer.fit(Tiny(), train_dataloaders=torch.utils.data.DataLoader(range(8), batch_size=1))
    history = read_history(tmp_path)
    assert sorted(history) == ["text/layer0", "text/layer1", "vision/layer0", "vision/layer1"]
    assert [s for s, _ in history["text/layer0"]] == [0, 2, 4]
    assert history["text/layer1"][0][1] != history["text/layer1"][-1][1]  # lambda trained
    with (tmp_path / LAMBDA_HISTORY_FILE).open("a") as handle:  # a resumed run appends a step again: the last wins
        handle.write(json.dumps({"step": 4, "text/layer0": 9.0}) + "\n")
    assert read_history(tmp_path)["text/layer0"][-1] == (4, 9.0)
    _not_blank(lambda_trajectories({"diff_split": read_history(tmp_path)}, tmp_path / "lambda.png"))


def test_curves_and_overlays_are_drawn(tmp_path):
    runs = {}
    for n, name in enumerate(["vanilla", "diff_dup"]):
        metrics = {"attention/chance_needle_of_image": 0.25}
        for layer in range(3):
            needle = 0.1 + 0.05 * layer * (n + 1)
            metrics.update({f"attention/text/layer{layer}/needle": needle,
                            f"attention/text/layer{layer}/needle_sem": 0.01,
                            f"attention/text/layer{layer}/distractor": 0.3 - needle / 2,
                            f"attention/text/layer{layer}/needle_of_image": needle / (needle + 0.3 - needle / 2)})
        runs[name] = metrics
    _not_blank(layer_curves(runs, tmp_path / "curves.png", "t"))
    with pytest.raises(ValueError, match="no attention/text/layer"):
        layer_curves({"x": {}}, tmp_path / "bad.png")
    maps = [torch.linspace(0, 1, 16), torch.linspace(1, -1, 16)]  # the second like a differential map
    item = OverlayItem(_haystack(["red", "blue", "green", "white"]), "a red circle", (1, 2, 1), maps)
    _not_blank(overlay_figure([item, item], 2, tmp_path / "overlay.png", "test"))
    with pytest.raises(ValueError, match="no prompt rows"):
        overlay_figure([item], 2, tmp_path / "none.png", "test", rows="prompt")


def test_run_attention_measures_mmneedle_positives_on_a_diff_model(processor64, tmp_path):
    from diffpali.evals.attention.task import run_attention

    cfg = EvaluateConfig()
    cfg.eval.task, cfg.eval.samples, cfg.eval.limit, cfg.eval.overlays = "attention", 8, 4, 2
    cfg.eval.cache_dir, cfg.eval.batch_size = str(tmp_path / "cache"), 4
    cfg.validate()
    model = _model(processor64, AttnConfig(variant="diff_split"))
    outcome = run_attention(cfg, model, processor64, "cpu", tmp_path)
    m = outcome.metrics
    assert m["attention/variant"] == "diff_split" and m["attention/samples"] == 4 and m["attention/questions"] == 8
    assert m["attention/chance_needle_of_image"] == 0.25
    for layer in (0, 1):
        shares = [m[f"attention/text/layer{layer}/{g}"] for g in ("needle", "distractor", "text")]
        assert sum(shares) == pytest.approx(1.0, abs=1e-5)
        assert f"attention/text/layer{layer}/head3/needle" in m and f"attention/text/layer{layer}/branch2/text" in m
        prompt = [m[f"attention/text/layer{layer}/prompt_rows/{g}"] for g in ("needle", "distractor", "text")]
        assert sum(prompt) == pytest.approx(1.0, abs=1e-5)
        assert m[f"attention/text/layer{layer}/lambda"] == pytest.approx(lambda_values(model)[f"text/layer{layer}"])
    records = [json.loads(line) for line in (tmp_path / "attention_samples.jsonl").read_text().splitlines()]
    assert [r["question"] for r in records] == ["row", "column"] * 4
    assert all(sum(r["prompt_layers"]["1"]) == pytest.approx(1.0, abs=1e-5) for r in records)
    assert set(outcome.pictures) == {"attention/layers", "attention/overlays", "attention/overlays_prompt"}
    for path in outcome.pictures.values():
        _not_blank(path)
    assert "layer 1:" in outcome.summary
    # the overlays draw the same numbers: per layer, the needle cell's patches and the whole image,
    # averaged over the sample's two questions, as in attention_samples.jsonl
    grid, items = read_overlays(tmp_path / "attention_overlays.json")
    assert grid == 2 and [i.sample_id for i in items] == [records[0]["sample_id"], records[2]["sample_id"]]
    for item in items:
        asked = [r for r in records if r["sample_id"] == item.sample_id]
        _, row, col = item.target
        for layer, weights in enumerate(item.maps):
            needle = sum(r["layers"][str(layer)][0] for r in asked) / 2
            image = sum(r["layers"][str(layer)][0] + r["layers"][str(layer)][1] for r in asked) / 2
            needle_cell = cell_patches(64, 16, 2)[(row - 1) * 2 + col - 1]
            assert float(weights[needle_cell].sum()) == pytest.approx(needle, abs=1e-5)
            assert float(weights.sum()) == pytest.approx(image, abs=1e-5)
        assert len(item.prompt_maps) == 2 and float(item.prompt_maps[1].sum()) > 0
    (tmp_path / "job.json").write_text(json.dumps({"status": "completed", "config": {"ckpt": "base"}}))
    _not_blank(compare_overlays([tmp_path, tmp_path], 1, tmp_path / "compare.png", rows="prompt"))
    # the same samples as MMNeedle: the haystacks come from the one cache, in its order
    from diffpali.evals.mmneedle.task import haystack_set

    assert [r["sample_id"] for r in records[::2]] == [h.sample_id for h in haystack_set(cfg, processor64).haystacks[:4]]


def test_attention_yaml_composes_to_mmneedle_haystacks():
    from hydra import compose, initialize_config_dir

    from diffpali.config import ConfigError, register_configs, to_typed

    conf = str(Path(__file__).resolve().parents[1] / "conf")

    register_configs()
    with initialize_config_dir(config_dir=conf, version_base="1.3"):
        def typed(*overrides: str) -> EvaluateConfig:
            return to_typed(compose(config_name="evaluate", overrides=[*overrides, "output_dir=."]), EvaluateConfig)

        attention, needle = typed("eval=attention"), typed("eval=mmneedle")
        with pytest.raises(ConfigError, match="eval.overlays"):
            typed("eval=attention", "eval.overlays=-1")
    assert attention.eval.task == "attention"
    for key in ("mode", "samples", "haystack_seed", "grid", "images", "source", "cell_size", "split"):
        assert getattr(attention.eval, key) == getattr(needle.eval, key), key


def test_report_tables_and_draws_every_attention_run(tmp_path):
    from diffpali.report.runs import load_jobs
    from diffpali.report.write import write_report

    trained = tmp_path / "train_diff"
    trained.mkdir()
    (trained / "job.json").write_text(json.dumps({"status": "completed", "overrides": ["attn=diff_dup"],
                                                  "config": {"attn": {"variant": "diff_dup", "dup_mode": "separate"}}}))
    for name, ckpt, needle in [("eval_base", "base", 0.1), ("eval_diff", str(trained), 0.3)]:
        run = tmp_path / name
        run.mkdir()
        (run / "job.json").write_text(json.dumps({"status": "completed", "config": {"ckpt": ckpt},
                                                  "overrides": [f"ckpt={ckpt}", "eval=attention"]}))
        metrics = {"ckpt": ckpt, "attention/questions": 8, "attention/chance_needle_of_image": 0.25}
        for layer in (0, 1):
            metrics.update({f"attention/text/layer{layer}/needle": needle + layer / 10,
                            f"attention/text/layer{layer}/needle_sem": 0.02,
                            f"attention/text/layer{layer}/distractor": 0.2,
                            f"attention/text/layer{layer}/text": 0.7 - needle - layer / 10,
                            f"attention/text/layer{layer}/needle_of_image": 0.5,
                            f"attention/text/layer{layer}/head0/needle": 0.9})
        (run / "metrics.json").write_text(json.dumps(metrics))
    written = write_report(load_jobs(tmp_path), tmp_path / "report", str(tmp_path))
    table = written["attention.md"].read_text()
    lines = [line for line in table.splitlines() if line.startswith("| base") or line.startswith("| yes")]
    assert [line.split("|")[1:3] for line in lines] == [[" base ", " 0 "], [" base ", " 1 "],
                                                         [" yes (dup, separate) (train_diff) ", " 0 "],
                                                         [" yes (dup, separate) (train_diff) ", " 1 "]]
    assert "40.00 ± 2.00" in table  # layer 1 of the diff run, in percent
    assert len(written["attention.csv"].read_text().splitlines()) == 1 + 4
    _not_blank(written["attention_layers.png"])
    # measured runs have results, so Table 1 does not list them among the jobs without a score
    table1 = written["table1.md"].read_text()
    assert "`eval_base`" not in table1 and "`eval_diff`" not in table1 and "**incomplete** `train_diff`" in table1
