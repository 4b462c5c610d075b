"""`ptlab study`: the T5 paper's controlled comparisons in miniature.

A study is a grid of cells. Each cell is one pre-training setting (an objective, an architecture, a corruption
rate, a data mix, or no pre-training at all) derived from one base pre-training config, so every cell sees the same
steps, batch and input length (the same token budget), and is then fine-tuned with one shared recipe on every
task, once per seed. Results land in RUN_DIR/results.jsonl as each fine-tune finishes, so a killed study
restarts at the first unfinished piece of work; the table is written from that file.

    RUN_DIR/cells/<cell>/pretrain/         the cell's pre-training run (checkpoints, metrics)
    RUN_DIR/cells/<cell>/<task>-seed<N>/   each fine-tune (best weights, predictions, scores)
    RUN_DIR/results.jsonl, table.md, table.csv, chart.png
"""

from ptlab.lab.study.plan import (
                                  StudyCell,
                                  StudyConfig,
                                  StudyFinetune,
                                  cell_config,
                                  cell_figures,
                                  estimate_seconds,
                                  example_lengths,
                                  finetune_config,
                                  format_plan,
                                  load_study,
                                  plan_study,
                                  task_label,
)
from ptlab.lab.study.report import summarize, write_tables
from ptlab.lab.study.run import prepare_data, read_results, run_cell, run_study

__all__ = ["StudyCell", "StudyConfig", "StudyFinetune", "cell_config", "cell_figures", "estimate_seconds",
           "example_lengths", "finetune_config", "format_plan", "load_study", "plan_study", "prepare_data",
           "read_results", "run_cell", "run_study", "summarize", "task_label", "write_tables"]
