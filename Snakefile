# flowrepro: acquire -> train -> sample -> evaluate -> claims -> figures -> report.
# Rules only wire paths; every job calls one `flowrepro <stage>` command.
from pathlib import Path

from snakemake.utils import min_version, validate

from flowrepro.config import (IMAGE_DATASETS, bind_roles, check_dataset_sizes, flow_settings, load_experiment,
                              load_scale, model_key, shared_models, training_settings)
from flowrepro.stages.benchmark import KINDS as BENCHMARK_KINDS

min_version("8.0")


configfile: "config/config.yaml"


# Validate everything before any job runs: the config, the scale file, each experiment file, and
# that the scale's datasets can supply its sample sizes.
validate(config, "workflow/schemas/config.schema.yaml")
SCALE_FILE = f"config/scales/{config['scale']}.yaml"
SCALE = load_scale(SCALE_FILE)
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
check_dataset_sizes(SCALE, {d for e in FLOW.values() for d in e["datasets"]}, SCALE_FILE)
MODEL_OWNERS = shared_models(FLOW, SCALE)  # model key -> the first experiment/model/dataset defining it


# Tiny models are overhead-bound: one thread per job, two jobs side by side, beats two threads
# per job (and two-thread jobs slow down 20x or more when anything else shares the cores).
JOB_THREADS = 1 if config["scale"] == "tiny" else 4


def one_of(names):
    """A wildcard constraint matching exactly these experiment names ("(?!)" matches none)."""
    return "|".join(names) if names else "(?!)"


def experiment_file(wildcards):
    return EXPERIMENT_FILES[wildcards.experiment]


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/sample.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/claims.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/report.smk"


rule all:
    input:
        "results/report.md",
        "results/report.html",
