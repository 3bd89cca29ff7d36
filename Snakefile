# flowrepro: acquire -> train -> sample -> evaluate -> claims -> figures -> report.
# Rules only wire paths; every job calls one `flowrepro <stage>` command.
from snakemake.utils import min_version, validate

from flowrepro.config import load_experiment, load_scale
from flowrepro.stages.benchmark import KINDS as BENCHMARK_KINDS

min_version("8.0")


configfile: "config/config.yaml"


# Validate everything before any job runs: the config, the scale file, each experiment file.
validate(config, "workflow/schemas/config.schema.yaml")
SCALE_FILE = f"config/scales/{config['scale']}.yaml"
SCALE = load_scale(SCALE_FILE)
EXPERIMENTS = {name: load_experiment(f"config/experiments/{name}.yaml") for name in config["experiments"]}
FLOW = {name: e for name, e in EXPERIMENTS.items() if e["kind"] == "flow"}
BENCHMARKS = {name: e for name, e in EXPERIMENTS.items() if e["kind"] != "flow"}


# Tiny models are overhead-bound: one thread per job, two jobs side by side, beats two threads
# per job (and two-thread jobs slow down 20x or more when anything else shares the cores).
JOB_THREADS = 1 if config["scale"] == "tiny" else 4


def one_of(names):
    """A wildcard constraint matching exactly these experiment names ("(?!)" matches none)."""
    return "|".join(names) if names else "(?!)"


def experiment_file(wildcards):
    return f"config/experiments/{wildcards.experiment}.yaml"


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
