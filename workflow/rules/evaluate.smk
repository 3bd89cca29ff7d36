def flow_data(wildcards):
    e = EXPERIMENTS[wildcards.experiment]
    return [f"data/{d}.npz" for d in e["datasets"]] if e["kind"] == "flow" else []


def flow_samples(wildcards):
    e = EXPERIMENTS[wildcards.experiment]
    if e["kind"] != "flow":
        return []
    return [f"results/{e['id']}/samples/{d}/{m}.npz" for d in e["datasets"] for m in e["models"]]


rule evaluate:
    input:
        experiment=experiment_file,
        data=flow_data,
        samples=flow_samples,
    params:
        scale_file=SCALE_FILE,
        settings=SCALE["flow2d"] | {"seeds": SCALE["seeds"]},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        report(
            "results/{experiment}/metrics.csv",
            caption="../report/metrics.rst",
            category="{experiment}",
        ),
    wildcard_constraints:
        experiment=one_of(FLOW),
    threads: JOB_THREADS
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "logs/benchmarks/evaluate/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro evaluate --experiment {input.experiment} --scale {params.scale_file}"
        " --data {input.data} --samples {input.samples} --out {output} > {log} 2>&1"


def benchmark_settings(wildcards):
    section = BENCHMARK_KINDS[EXPERIMENTS[wildcards.experiment]["kind"]][3]  # the runner's scale section
    return {"seeds": SCALE["seeds"], **SCALE.get(section, {})}


rule benchmark:
    input:
        experiment=experiment_file,
    params:
        scale_file=SCALE_FILE,
        settings=benchmark_settings,  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        report(
            "results/{experiment}/metrics.csv",
            caption="../report/metrics.rst",
            category="{experiment}",
        ),
    wildcard_constraints:
        experiment=one_of(BENCHMARKS),
    threads: JOB_THREADS
    log:
        "logs/benchmark/{experiment}.log",
    benchmark:
        "logs/benchmarks/benchmark/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro benchmark --experiment {input.experiment} --scale {params.scale_file}"
        " --out {output} > {log} 2>&1"
