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


def owner_of(key):
    """(experiment, model name) of the first experiment in this config that defines model ``key``."""
    owner = MODEL_OWNERS[key]
    return EXPERIMENTS[owner["experiment"]], owner["model"]


def train_inputs(wildcards):
    """Data, reflow pairs, initial weights and the plugin files of the model's pieces: nothing that
    names the experiment, so the job is the same whichever experiment lists the model."""
    experiment, name = owner_of(wildcards.key)
    spec = experiment["models"][name]
    seed = f".seed{wildcards.seed}" if "seed" in wildcards.keys() else ""
    inputs = {"data": f"data/{wildcards.dataset}.npz", "plugins": [p["file"] for p in model_plugins(experiment, name)]}
    if spec.get("coupling") == "reflow":
        inputs["pairs"] = f"{model_stem(experiment['id'], spec['pairs_from'], wildcards.dataset)}{seed}.pairs.npy"
    if "init" in spec:
        inputs["init"] = f"{model_stem(experiment['id'], spec['init'], wildcards.dataset)}{seed}.pt"
    return inputs


def model_description(wildcards):
    """The model as JSON (flowrepro.config.model_identity and its plugin files): the train job's --model-spec."""
    experiment, name = owner_of(wildcards.key)
    description = model_identity(experiment, name, wildcards.dataset, SCALE)
    return json.dumps(description | {"plugin_files": model_plugins(experiment, name)}, sort_keys=True)


def train_settings(wildcards):
    """What this job reads of the scale and the recipe: a change re-runs it, other sections do not."""
    experiment, _ = owner_of(wildcards.key)
    return training_settings(SCALE, experiment, wildcards.dataset) | {"seeds": SEEDS}


rule train:
    input:
        unpack(train_inputs),
    output:
        "results/models/{dataset}/{key}.pt",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    params:
        model_spec=model_description,
        settings=train_settings,
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
        seed="",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
        runtime={"tiny": 20, "smoke": 20, "small": 120}.get(SCALE_NAME, 720),  # minutes; a longer run resumes from its checkpoint
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 8000}.get(SCALE_NAME, 32000),
    threads: JOB_THREADS
    log:
        "logs/train/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} train --model-spec {params.model_spec:q} --scale {SCALE_FILE}"
        " --data {input.data} {params.seed} {params.pairs} {params.init} --out {output} > {log} 2>&1"


use rule train as train_seed with:
    output:
        "results/models/{dataset}/{key}.seed{seed}.pt",
    wildcard_constraints:
        key="[0-9a-f]{12}",
        seed="[0-9]+",
    params:
        model_spec=model_description,
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
        settings=lambda wildcards: flow_settings(SCALE, wildcards.dataset) | {"seeds": SEEDS},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        "results/models/{dataset}/{key}.pairs.npy",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
        runtime={"tiny": 10, "smoke": 10, "small": 60}.get(SCALE_NAME, 240),  # minutes
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 8000}.get(SCALE_NAME, 32000),
    threads: JOB_THREADS
    log:
        "logs/reflow_pairs/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} reflow-pairs --scale {SCALE_FILE}"
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
