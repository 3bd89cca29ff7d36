rule sample:
    input:
        experiment=experiment_file,
        model=lambda wildcards: model_files(wildcards.experiment, wildcards.model, wildcards.dataset),
        plugins=sampler_plugin_files,
    params:
        settings=lambda wildcards: flow_settings(SCALE, wildcards.dataset) | {"seeds": SEEDS},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        "results/{experiment}/samples/{dataset}/{model}.npz",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
        runtime={"tiny": 10, "smoke": 10, "small": 30}.get(SCALE_NAME, 120),  # minutes
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 4000}.get(SCALE_NAME, 16000),
    threads: JOB_THREADS
    log:
        "logs/sample/{experiment}/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/sample/{experiment}/{dataset}/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} sample --experiment {input.experiment} --scale {SCALE_FILE}"
        " --model-file {input.model} --method {wildcards.model} --out {output} > {log} 2>&1"
