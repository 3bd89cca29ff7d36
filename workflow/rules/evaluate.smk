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
        scale=SCALE_FILE,
        data=flow_data,
        samples=flow_samples,
    output:
        report(
            "results/{experiment}/metrics.csv",
            caption="../report/metrics.rst",
            category="{experiment}",
        ),
    wildcard_constraints:
        experiment=one_of(FLOW),
    threads: 2
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "logs/benchmarks/evaluate/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro evaluate --experiment {input.experiment} --scale {input.scale}"
        " --data {input.data} --samples {input.samples} --out {output} > {log} 2>&1"


rule benchmark:
    input:
        experiment=experiment_file,
        scale=SCALE_FILE,
    output:
        report(
            "results/{experiment}/metrics.csv",
            caption="../report/metrics.rst",
            category="{experiment}",
        ),
    wildcard_constraints:
        experiment=one_of(BENCHMARKS),
    threads: 2
    log:
        "logs/benchmark/{experiment}.log",
    benchmark:
        "logs/benchmarks/benchmark/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro benchmark --experiment {input.experiment} --scale {input.scale}"
        " --out {output} > {log} 2>&1"
