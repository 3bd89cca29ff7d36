# flowrepro: acquire -> train -> sample -> evaluate -> claims -> figures -> report.
# Rules only wire paths; every job calls one `flowrepro <stage>` command.
import json
import shlex
import sys
from pathlib import Path

from snakemake.utils import min_version, validate

from flowrepro.config import (IMAGE_DATASETS, benchmark_seeds, bind_roles, check_dataset_sizes, experiment_plugin_files, flow_datasets,
                              flow_runs, flow_settings, load_experiment, model_identity, model_key, model_plugins, pretrained_models,
                              pretrained_skipped, RUN_SETTINGS, sampling_plugin_files, shared_models, training_settings,
                              workflow_scale)
from flowrepro.stages.benchmark import KINDS as BENCHMARK_KINDS

min_version("8.0")


configfile: "config/config.yaml"


# Validate everything before any job runs: the config, the scale file (a name or a path, with any
# of its keys overridden by the config), each experiment file, and that the scale's datasets can
# supply its sample sizes.
validate(config, "workflow/schemas/config.schema.yaml")
SCALE_FILE, SCALE = workflow_scale(config)  # the file every job reads (the merged scale where the config overrides it)
SCALE_NAME = SCALE["scale"]
# Jobs run the interpreter that runs Snakemake, so they never depend on `flowrepro` being on PATH.
FLOWREPRO = f"{shlex.quote(sys.executable)} -m flowrepro"
SEEDS = SCALE["seeds"]
SEED_JOBS = SCALE.get("seed_jobs", False)  # small/paper: each seed of a model trains in its own job


def experiment_path(entry):
    """An `experiments:` entry is a name (config/experiments/<name>.yaml) or a path to a YAML file."""
    return entry if entry.endswith((".yaml", ".yml")) else f"config/experiments/{entry}.yaml"


EXPERIMENT_FILES = {Path(experiment_path(e)).stem: experiment_path(e) for e in config["experiments"]}  # id -> file
# Dataset roles (images) bound to this scale's datasets (digits, mnist, cifar10).
EXPERIMENTS = {name: bind_roles(load_experiment(path), SCALE, path) for name, path in EXPERIMENT_FILES.items()}
FLOW = {name: e for name, e in EXPERIMENTS.items() if e["kind"] == "flow"}
BENCHMARKS = {name: e for name, e in EXPERIMENTS.items() if e["kind"] != "flow"}
check_dataset_sizes(SCALE, {d for e in FLOW.values() for d in flow_datasets(e, SCALE)}, SCALE_FILE)
# Pretrained networks (sampled, never trained) run where the scale acquires their weights with known sha256.
PRETRAINED = {name: pretrained_models(e, SCALE) for name, e in FLOW.items()}  # experiment -> {model: entry}
for _name, _e in FLOW.items():
    for _model, _why in pretrained_skipped(_e, SCALE).items():
        print(f"flowrepro: {_name}: pretrained {_model} not run: {_why.splitlines()[0]}", file=sys.stderr)
MODEL_OWNERS = shared_models(FLOW, SCALE)  # model key -> the first experiment/model/dataset defining it


# Tiny models are overhead-bound: one thread per job, two jobs side by side, beats two threads
# per job (and two-thread jobs slow down 20x or more when anything else shares the cores).
JOB_THREADS = 1 if SCALE_NAME == "tiny" else 4


def one_of(names):
    """A wildcard constraint matching exactly these experiment names ("(?!)" matches none)."""
    return "|".join(names) if names else "(?!)"


def job_settings(dataset, experiment=None, model=None):
    """The dataset's scale section (with ``experiment``: its, or its ``model``'s, training settings) as train, sample,
    reflow-pairs and evaluate jobs read it, a change re-running them: without ``ems``, the sizes only the ems job reads (ems.smk)."""
    settings = flow_settings(SCALE, dataset) if experiment is None else training_settings(SCALE, experiment, dataset, model)
    return {k: v for k, v in settings.items() if k != "ems"}


def experiment_file(wildcards):
    return EXPERIMENT_FILES[wildcards.experiment]


def plugin_files(wildcards):
    """The experiment's plugin files: inputs of its benchmark job, so an edit reruns it."""
    return experiment_plugin_files(EXPERIMENTS[wildcards.experiment])


def sampler_plugin_files(wildcards):
    """Plugin files of the samplers and schedules run on this model (its own plugins are in its key)."""
    return sampling_plugin_files(EXPERIMENTS[wildcards.experiment], wildcards.model)


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/ems.smk"
include: "workflow/rules/search.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report.md",
        "results/report.html",
