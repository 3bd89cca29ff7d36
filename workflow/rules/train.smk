# Trained models live under results/models/<dataset>/<key>.pt, one per distinct model
# (flowrepro.config.model_key): experiments that define the same model share its file and job.
# Where the scale has seed_jobs (small, paper), each seed is its own job and file: <key>.seed<k>.pt,
# and a reflow model's seed k trains on the pairs of its teacher's seed k.


def model_stem(experiment, model, dataset):
    return f"results/models/{dataset}/{model_key(EXPERIMENTS[experiment], model, dataset, SCALE)}"


def model_files(experiment, model, dataset):
    """The files holding a model's seeds: one per seed with seed_jobs, else one for all."""
    stem = model_stem(experiment, model, dataset)
    return [f"{stem}.seed{seed}.pt" for seed in SEEDS] if SEED_JOBS else [f"{stem}.pt"]


def train_inputs(wildcards):
    owner = MODEL_OWNERS[wildcards.key]
    spec = EXPERIMENTS[owner["experiment"]]["models"][owner["model"]]
    seed = f".seed{wildcards.seed}" if "seed" in wildcards.keys() else ""
    inputs = {"experiment": EXPERIMENT_FILES[owner["experiment"]], "data": f"data/{wildcards.dataset}.npz"}
    if spec.get("coupling") == "reflow":
        inputs["pairs"] = f"{model_stem(owner['experiment'], spec['pairs_from'], wildcards.dataset)}{seed}.pairs.npy"
    if "init" in spec:
        inputs["init"] = f"{model_stem(owner['experiment'], spec['init'], wildcards.dataset)}{seed}.pt"
    return inputs


def train_settings(wildcards):
    """What this job reads of the scale and the owner's recipe: a change re-runs it, other sections do not."""
    owner = MODEL_OWNERS[wildcards.key]
    return training_settings(SCALE, EXPERIMENTS[owner["experiment"]], wildcards.dataset) | {"seeds": SEEDS}


rule train:
    input:
        unpack(train_inputs),
    output:
        "results/models/{dataset}/{key}.pt",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    params:
        scale_file=SCALE_FILE,
        model=lambda wildcards: MODEL_OWNERS[wildcards.key]["model"],
        settings=train_settings,
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
        seed="",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if config["scale"] in ("tiny", "smoke") else 1,
        runtime={"tiny": 20, "smoke": 20, "small": 120}.get(config["scale"], 720),  # minutes; a longer run resumes from its checkpoint
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 8000}.get(config["scale"], 32000),
    threads: JOB_THREADS
    log:
        "logs/train/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro train --experiment {input.experiment} --scale {params.scale_file}"
        " --dataset {wildcards.dataset} --model {params.model} --data {input.data} {params.seed}"
        " {params.pairs} {params.init} --out {output} > {log} 2>&1"


use rule train as train_seed with:
    output:
        "results/models/{dataset}/{key}.seed{seed}.pt",
    wildcard_constraints:
        key="[0-9a-f]{12}",
        seed="[0-9]+",
    params:
        scale_file=SCALE_FILE,
        model=lambda wildcards: MODEL_OWNERS[wildcards.key]["model"],
        settings=train_settings,
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
        seed=lambda wildcards: f"--seed {wildcards.seed}",
    log:
        "logs/train/{dataset}/{key}.seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{key}.seed{seed}.tsv"


rule reflow_pairs:
    input:
        model="results/models/{dataset}/{key}.pt",
    params:
        scale_file=SCALE_FILE,
        settings=lambda wildcards: flow_settings(SCALE, wildcards.dataset) | {"seeds": SEEDS},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        "results/models/{dataset}/{key}.pairs.npy",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if config["scale"] in ("tiny", "smoke") else 1,
        runtime={"tiny": 10, "smoke": 10, "small": 60}.get(config["scale"], 240),  # minutes
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 8000}.get(config["scale"], 32000),
    threads: JOB_THREADS
    log:
        "logs/reflow_pairs/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro reflow-pairs --scale {params.scale_file}"
        " --model-file {input.model} --out {output} > {log} 2>&1"


use rule reflow_pairs as reflow_pairs_seed with:
    input:
        model="results/models/{dataset}/{key}.seed{seed}.pt",
    output:
        "results/models/{dataset}/{key}.seed{seed}.pairs.npy",
    wildcard_constraints:
        key="[0-9a-f]{12}",
        seed="[0-9]+",
    log:
        "logs/reflow_pairs/{dataset}/{key}.seed{seed}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{dataset}/{key}.seed{seed}.tsv"
