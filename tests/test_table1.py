"""The paper's Table 1 as a Hydra grid: each row file composes to the paper's hyper-parameters, the one
multirun command expands to exactly the five rows x seeds, and launches that would misbehave are refused."""

from __future__ import annotations

from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper  # the sweeper `-m` uses
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.types import RunMode

from diffpali.config import ConfigError, TrainConfig, TrainerConfig, register_configs, to_typed
from diffpali.jobs import check_launch, relaunches_script

ROOT = Path(__file__).resolve().parents[1]
CONF = str(ROOT / "conf")

# Written out here, not imported from diffpali.report, so a typo in either place fails a test.
# row: (attn.variant, ffn.variant, lr, lora rank, lora alpha, weight decay)
PAPER = {
    1: ("vanilla", "mlp", 4e-4, 32, 64, 1e-9),
    2: ("diff_dup", "swiglu", 4e-4, 32, 64, 1e-9),
    3: ("vanilla", "mlp", 2e-5, 16, 32, 1e-8),
    4: ("diff_dup", "mlp", 2e-5, 32, 64, 1e-8),
    5: ("diff_split", "swiglu", 2e-5, 32, 64, 1e-8),
}


@pytest.fixture(scope="module")
def hydra_conf():
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base="1.3"):
        yield GlobalHydra.instance().config_loader()


def typed(*overrides: str) -> TrainConfig:
    return to_typed(compose(config_name="train", overrides=["output_dir=.", *overrides]), TrainConfig)


def expand(loader, *arguments: str) -> list[list[str]]:
    """The jobs `python train.py -m <arguments>` launches: Hydra's own parser and basic sweeper,
    the sweeper params of the composed config first, then the command line (as BasicSweeper.sweep)."""
    plain = [a for a in arguments if "," not in a and "glob(" not in a]
    hydra_cfg = compose(config_name="train", overrides=plain, return_hydra_config=True).hydra
    params = [f"{k}={v}" for k, v in (hydra_cfg.sweeper.params or {}).items()]
    parsed = OverridesParser.create(config_loader=loader).parse_overrides([*params, *arguments])
    return [job for batch in BasicSweeper.split_arguments(parsed, None) for job in batch]


@pytest.mark.parametrize("row", sorted(PAPER))
def test_each_row_composes_to_the_papers_hyper_parameters(hydra_conf, row):
    cfg = typed(f"experiment=table1/row{row}")
    attn, ffn, lr, rank, alpha, wd = PAPER[row]
    assert (cfg.attn.variant, cfg.ffn.variant) == (attn, ffn)
    assert cfg.optim.name == "adam" and cfg.optim.lr == pytest.approx(lr, rel=1e-12)
    assert cfg.optim.weight_decay == pytest.approx(wd, rel=1e-12)
    assert (cfg.lora.rank, cfg.lora.alpha) == (rank, alpha)
    assert cfg.data.batch_size == 4
    assert (cfg.table_row, cfg.experiment_name) == (row, "table1")
    # the rows change the method only: the embedded default model and data stay
    assert (cfg.model.name, cfg.data.name) == ("tiny", "easy_vqa")


def test_glob_over_nested_options_is_not_supported_but_the_table1_experiment_expands_to_the_grid(hydra_conf):
    # Hydra 1.3's glob lists only a group's direct options ("quick", "table1"): no job at all.
    assert expand(hydra_conf, "experiment=glob(table1/*)") == []
    jobs = expand(hydra_conf, "experiment=table1")
    assert len(jobs) == 15
    picked = sorted((job[0], job[1]) for job in jobs)
    assert picked == sorted((f"+experiment/table1=row{r}", f"seed={s}") for r in range(1, 6) for s in (1, 2, 3))
    # a command-line value replaces the grid's seeds: one seed, five jobs
    one_seed = expand(hydra_conf, "experiment=table1", "seed=0")
    assert sorted(j[0] for j in one_seed) == [f"+experiment/table1=row{r}" for r in range(1, 6)]
    assert all("seed=0" in job for job in one_seed)


def test_every_job_of_the_grid_composes_to_its_row(hydra_conf):
    seen = set()
    for job in expand(hydra_conf, "experiment=table1", "scale=cpu_smoke", "seed=7"):
        cfg = typed(*job)
        attn, ffn, lr, rank, _, _ = PAPER[cfg.table_row]
        assert (cfg.attn.variant, cfg.ffn.variant, cfg.lora.rank) == (attn, ffn, rank)
        assert cfg.optim.lr == pytest.approx(lr) and cfg.data.batch_size == 4
        assert cfg.data.train_limit == 256  # scale=cpu_smoke shrinks every row, changing nothing else
        seen.add((cfg.table_row, cfg.seed))
    assert seen == {(r, 7) for r in range(1, 6)}


def test_a_command_line_sweep_over_a_row_gives_peft_the_swept_rank(hydra_conf, tiny_model):
    from diffpali.model import wrap_lora

    jobs = expand(hydra_conf, "experiment=table1/row3", "lora.rank=16,32")
    assert len(jobs) == 2
    ranks = []
    for job in jobs:
        cfg = typed(*job)
        assert cfg.table_row == 3 and cfg.lora.alpha == 32  # the row's alpha; the command line only moved the rank
        peft_model = wrap_lora(tiny_model, cfg.lora)
        lora_a = [m for name, m in peft_model.named_modules() if name.endswith("lora_A.default")]
        assert lora_a and {m.out_features for m in lora_a} == {cfg.lora.rank}
        ranks.append(peft_model.peft_config["default"].r)
        tiny_model = peft_model.unload()
    assert ranks == [16, 32]


def test_scale_paper_switches_model_data_and_trainer_but_keeps_the_row(hydra_conf):
    cfg = typed("experiment=table1/row2", "scale=paper")
    assert (cfg.model.name, cfg.data.name, cfg.trainer.accelerator) == ("paligemma_3b_224", "vqav2", "gpu")
    assert cfg.data.train_limit == 177503 and cfg.data.batch_size == 4 and cfg.table_row == 2


def test_ddp_trainer_group_and_which_launches_relaunch_the_command_line(hydra_conf):
    cfg = typed("trainer=ddp")
    assert (cfg.trainer.strategy, cfg.trainer.devices, cfg.trainer.accelerator) == ("ddp", "auto", "gpu")
    assert relaunches_script(TrainerConfig(accelerator="cpu", strategy="ddp", devices=2))
    assert relaunches_script(TrainerConfig(accelerator="gpu", devices=[0, 1]))
    assert relaunches_script(TrainerConfig(accelerator="gpu", devices=1, num_nodes=2))
    assert not relaunches_script(TrainerConfig(accelerator="cpu", devices=1))
    assert not relaunches_script(TrainerConfig(accelerator="cpu", devices="auto"))
    assert not relaunches_script(TrainerConfig(accelerator="cpu", strategy="ddp_spawn", devices=2))


def test_slurm_launcher_config_extends_the_submitit_plugin(hydra_conf):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    launcher = compose(config_name="train", overrides=["hydra/launcher=slurm"], return_hydra_config=True).hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.timeout_min > 0
    assert "partition" in launcher and "account" in launcher  # the plugin's keys are all there


def hydra_node(*overrides: str, mode: RunMode):
    """The `hydra` node a job sees (HydraConfig.get()), in the given mode."""
    node = compose(config_name="train", overrides=list(overrides), return_hydra_config=True).hydra
    node.mode = mode
    return node


def test_the_grid_without_multirun_is_a_config_error(hydra_conf):
    cfg = typed("experiment=table1")
    with pytest.raises(ConfigError, match=r"this config is a sweep .*run it with -m"):
        check_launch(cfg, hydra_node("experiment=table1", mode=RunMode.RUN))
    check_launch(cfg, hydra_node("experiment=table1", mode=RunMode.MULTIRUN))  # a job of the grid: fine
    row = typed("experiment=table1/row2")
    check_launch(row, hydra_node("experiment=table1/row2", mode=RunMode.RUN))  # one row alone: fine


def test_multirun_with_in_process_ddp_is_refused_but_single_runs_and_submitit_are_not(hydra_conf):
    ddp = ["trainer.accelerator=cpu", "trainer.strategy=ddp", "trainer.devices=2"]
    cfg = typed(*ddp)
    with pytest.raises(ConfigError, match="relaunch this whole multirun") as refused:
        check_launch(cfg, hydra_node(*ddp, mode=RunMode.MULTIRUN))
    assert "use hydra/launcher=slurm " in str(refused.value)  # the launcher name the user can type
    check_launch(cfg, hydra_node(*ddp, mode=RunMode.RUN))
    check_launch(typed(), hydra_node(mode=RunMode.MULTIRUN))  # one device: any sweep is fine
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    check_launch(cfg, hydra_node(*ddp, "hydra/launcher=slurm", mode=RunMode.MULTIRUN))


def test_job_directory_names_and_wandb_identity_of_a_grid_job():
    from diffpali.jobs import path_safe, sweep_group
    from diffpali.loggers import variant_tags

    assert path_safe("+experiment/table1=row2,seed=3") == "+experiment-table1=row2,seed=3"
    long_a, long_b = "x=" + "a" * 300 + ",seed=1", "x=" + "a" * 300 + ",seed=2"
    assert len(path_safe(long_a).encode()) < 255 and path_safe(long_a) != path_safe(long_b)
    assert sweep_group("table1", "multirun/table1/2025-01-31_12-00-00") == "table1-2025-01-31_12-00-00"
    config = {"attn": {"variant": "diff_dup", "dup_mode": "separate"}, "ffn": {"variant": "swiglu"},
              "lora": {"rank": 32}, "table_row": 2}
    assert variant_tags(config) == ["attn=diff_dup", "dup_mode=separate", "ffn=swiglu", "lora_r=32", "table1_row=2"]
