# DPM-Solver-v3's empirical model statistics: one cached, checksummed file per (experiment, dataset,
# model), holding every seed's EMS for the experiment's dpm_solver_v3 entries (flowrepro.stages.ems).
# The sample job of that model takes it as input and never recomputes it.
from flowrepro.stages.ems import v3_entries


def needs_ems(wildcards):
    """Whether this trained model's sample job runs dpm_solver_v3 (then it takes the EMS file)."""
    return not sample_is_pretrained(wildcards) and bool(
        v3_entries(EXPERIMENTS[wildcards.experiment], wildcards.dataset, wildcards.model))


rule ems:
    input:
        experiment=experiment_file,
        model=lambda wildcards: model_files(wildcards.experiment, wildcards.model, wildcards.dataset),
        data="data/{dataset}.npz",
    params:
        settings=lambda wildcards: flow_settings(SCALE, wildcards.dataset) | {"seeds": SEEDS},
    output:
        "results/{experiment}/ems/{dataset}/{model}.safetensors",
    resources:
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
        # minutes, all seeds in one job: tiny measured ~1 min; estimates per seed: small 1024 x 400 x 2 JVP evaluations
        # (~7 min on one A100 at ~2,000 JVP/s), paper 4096 x 1200 x 2 through the 35.7 M UNet (~5.5 h at ~500 JVP/s)
        runtime={"tiny": 10, "smoke": 10}.get(SCALE_NAME, (20 if SCALE_NAME == "small" else 400) * len(SEEDS)),
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 4000}.get(SCALE_NAME, 16000),
    threads: JOB_THREADS
    log:
        "logs/ems/{experiment}/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/ems/{experiment}/{dataset}/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} ems --experiment {input.experiment} --scale {SCALE_FILE}"
        " --model-file {input.model} --data {input.data} --method {wildcards.model} --out {output} > {log} 2>&1"
