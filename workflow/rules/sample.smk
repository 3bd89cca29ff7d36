def sample_is_pretrained(wildcards):
    return wildcards.model in PRETRAINED.get(wildcards.experiment, {})


def sample_inputs(wildcards):
    """The experiment, the sampler plugins and the model: a trained model's file(s), or a pretrained
    network's acquired folder (its manifest, written last) and the data it generates."""
    inputs = {"experiment": experiment_file(wildcards), "plugins": sampler_plugin_files(wildcards)}
    if not sample_is_pretrained(wildcards):
        ems = {"ems": f"results/{wildcards.experiment}/ems/{wildcards.dataset}/{wildcards.model}.safetensors"} if needs_ems(wildcards) else {}
        return inputs | {"model": model_files(wildcards.experiment, wildcards.model, wildcards.dataset)} | ems
    weights = PRETRAINED[wildcards.experiment][wildcards.model]["weights"]
    return inputs | {"weights": f"data/weights/{weights}/{weights}.sha256", "data": f"data/{wildcards.dataset}.npz"}


def sample_model_flags(wildcards, input):
    if "weights" in input.keys():
        return f"--pretrained {Path(input.weights).parent} --data {input.data}"
    ems = f" --ems {input.ems}" if "ems" in input.keys() else ""  # DPM-Solver-v3's cached statistics (ems.smk)
    return f"--model-file {input.model}{ems}"


rule sample:
    input:
        unpack(sample_inputs),
    params:
        settings=lambda wildcards: job_settings(wildcards.dataset) | {"seeds": SEEDS},  # what this job reads of the scale: a change re-runs it, other sections do not
        model=sample_model_flags,
    output:
        "results/{experiment}/samples/{dataset}/{model}.npz",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
        # minutes. A pretrained network runs every sampler on n_eval images a seed (ESTIMATE: 6 samplers x 3 budgets x
        # ~12 calls x 3 seeds of the 35.7 M CIFAR-10 DDPM, ~1,300 images/s forward on one A100 in fp32: small 10k -> 30 min,
        # paper 50k -> 2.5 h; doubled for margin).
        runtime=lambda wildcards: {"tiny": 10, "smoke": 10}.get(SCALE_NAME) or (
            {"small": 60}.get(SCALE_NAME, 300) if sample_is_pretrained(wildcards) else {"small": 30}.get(SCALE_NAME, 120)),
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 4000}.get(SCALE_NAME, 16000),
    threads: JOB_THREADS
    log:
        "logs/sample/{experiment}/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/sample/{experiment}/{dataset}/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} sample --experiment {input.experiment} --scale {SCALE_FILE}"
        " {params.model} --method {wildcards.model} --out {output} > {log} 2>&1"
