"""`ptlab study`: the T5 paper's controlled comparisons in miniature.

A study is a grid of cells. Each cell is one pre-training setting (an objective, an architecture, a corruption
rate, a data mix, continued pre-training from another cell, task-adaptive pre-training, or no pre-training at all)
derived from one base pre-training config, so every cell sees the same steps, batch and input length (the same
token budget) unless it says otherwise, and is then fine-tuned with one shared recipe on every task (or the cell's
`tasks`), once per pre-training seed and fine-tuning seed. Results land in RUN_DIR/results.jsonl as each fine-tune
finishes, so a killed study restarts at the first unfinished piece of work; the table is written from that file.

    RUN_DIR/cells/<cell>/pretrain[-<task>][-seed<P>]/                  a pre-training run (checkpoints, metrics)
    RUN_DIR/cells/<cell>/<task>-seed<N>[-pretrain-seed<P>]/            each fine-tune (best weights, scores)
    RUN_DIR/results.jsonl, table.md, table.csv, chart.png

The bracketed parts appear only when needed: a task for a cell that pre-trains per task (`adapt: task`), a
pre-training seed other than the base config's (so a single-seed study keeps its directories).
"""

from ptlab.lab.study.estimate import cell_figures, estimate_seconds, example_lengths, format_plan
from ptlab.lab.study.plan import (
                                  FinetuneRun,
                                  Plan,
                                  PretrainRun,
                                  StudyCell,
                                  StudyConfig,
                                  StudyFinetune,
                                  cell_config,
                                  finetune_config,
                                  load_study,
                                  plan_study,
                                  task_label,
)
from ptlab.lab.study.report import summarize, write_tables
from ptlab.lab.study.run import prepare_data, read_results, run_study

__all__ = ["FinetuneRun", "Plan", "PretrainRun", "StudyCell", "StudyConfig", "StudyFinetune", "cell_config",
           "cell_figures", "estimate_seconds", "example_lengths", "finetune_config", "format_plan", "load_study",
           "plan_study", "prepare_data", "read_results", "run_study", "summarize", "task_label", "write_tables"]
