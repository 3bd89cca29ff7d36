def flow_data(wildcards):
    return [f"data/{d}.npz" for d in FLOW[wildcards.experiment]["datasets"]]


def flow_samples(wildcards):
    e = FLOW[wildcards.experiment]
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
    threads: 2
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "logs/benchmarks/evaluate/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro evaluate --experiment {input.experiment} --scale {input.scale}"
        " --data {input.data} --samples {input.samples} --out {output} > {log} 2>&1"
