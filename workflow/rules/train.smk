def train_inputs(wildcards):
    spec = FLOW[wildcards.experiment]["models"][wildcards.model]
    base = f"results/{wildcards.experiment}"
    inputs = {
        "experiment": experiment_file(wildcards),
        "data": f"data/{wildcards.dataset}.npz",
    }
    if spec.get("coupling") == "reflow":
        inputs["pairs"] = f"{base}/pairs/{wildcards.dataset}/{spec['pairs_from']}.npz"
    if "init" in spec:
        inputs["init"] = f"{base}/models/{wildcards.dataset}/{spec['init']}.pt"
    return inputs


rule train:
    input:
        unpack(train_inputs),
    output:
        "results/{experiment}/models/{dataset}/{model}.pt",
    params:
        scale_file=SCALE_FILE,
        settings=SCALE["flow2d"] | {"seeds": SCALE["seeds"]},  # what this job reads of the scale: a change re-runs it, other sections do not
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if config["scale"] == "tiny" else 1,
        runtime={"tiny": 20, "small": 120}.get(config["scale"], 720),  # minutes
        mem_mb={"tiny": 2000, "small": 8000}.get(config["scale"], 32000),
    threads: JOB_THREADS
    log:
        "logs/train/{experiment}/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/train/{experiment}/{dataset}/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro train --experiment {input.experiment} --scale {params.scale_file}"
        " --dataset {wildcards.dataset} --model {wildcards.model} --data {input.data}"
        " {params.pairs} {params.init} --out {output} > {log} 2>&1"


rule reflow_pairs:
    input:
        model="results/{experiment}/models/{dataset}/{model}.pt",
    params:
        scale_file=SCALE_FILE,
        settings=SCALE["flow2d"] | {"seeds": SCALE["seeds"]},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        "results/{experiment}/pairs/{dataset}/{model}.npz",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if config["scale"] == "tiny" else 1,
        runtime={"tiny": 10, "small": 60}.get(config["scale"], 240),  # minutes
        mem_mb={"tiny": 2000, "small": 8000}.get(config["scale"], 32000),
    threads: JOB_THREADS
    log:
        "logs/reflow_pairs/{experiment}/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{experiment}/{dataset}/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro reflow-pairs --scale {params.scale_file}"
        " --model-file {input.model} --out {output} > {log} 2>&1"
