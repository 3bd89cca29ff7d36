# Trained models live under results/models/<dataset>/<key>.pt, one per distinct model
# (flowrepro.config.model_key): experiments that define the same model share its file and job.


def model_file(experiment, model, dataset):
    return f"results/models/{dataset}/{model_key(EXPERIMENTS[experiment], model, dataset, SCALE)}.pt"


def train_inputs(wildcards):
    owner = MODEL_OWNERS[wildcards.key]
    spec = EXPERIMENTS[owner["experiment"]]["models"][owner["model"]]
    inputs = {"experiment": EXPERIMENT_FILES[owner["experiment"]], "data": f"data/{wildcards.dataset}.npz"}
    if spec.get("coupling") == "reflow":
        inputs["pairs"] = model_file(owner["experiment"], spec["pairs_from"], wildcards.dataset).removesuffix(".pt") + ".pairs.npz"
    if "init" in spec:
        inputs["init"] = model_file(owner["experiment"], spec["init"], wildcards.dataset)
    return inputs


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
        settings=lambda wildcards: flow_settings(SCALE, wildcards.dataset) | {"seeds": SCALE["seeds"]},  # what this job reads of the scale: a change re-runs it, other sections do not
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if config["scale"] == "tiny" else 1,
        runtime={"tiny": 20, "small": 120}.get(config["scale"], 720),  # minutes
        mem_mb={"tiny": 2000, "small": 8000}.get(config["scale"], 32000),
    threads: JOB_THREADS
    log:
        "logs/train/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro train --experiment {input.experiment} --scale {params.scale_file}"
        " --dataset {wildcards.dataset} --model {params.model} --data {input.data}"
        " {params.pairs} {params.init} --out {output} > {log} 2>&1"


rule reflow_pairs:
    input:
        model="results/models/{dataset}/{key}.pt",
    params:
        scale_file=SCALE_FILE,
        settings=lambda wildcards: flow_settings(SCALE, wildcards.dataset) | {"seeds": SCALE["seeds"]},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        "results/models/{dataset}/{key}.pairs.npz",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if config["scale"] == "tiny" else 1,
        runtime={"tiny": 10, "small": 60}.get(config["scale"], 240),  # minutes
        mem_mb={"tiny": 2000, "small": 8000}.get(config["scale"], 32000),
    threads: JOB_THREADS
    log:
        "logs/reflow_pairs/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro reflow-pairs --scale {params.scale_file}"
        " --model-file {input.model} --out {output} > {log} 2>&1"
