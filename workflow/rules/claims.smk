rule claims:
    input:
        experiment=experiment_file,
        metrics="results/{experiment}/metrics.csv",
    output:
        report(
            "results/{experiment}/claims.csv",
            caption="../report/claims.rst",
            category="{experiment}",
        ),
    log:
        "logs/claims/{experiment}.log",
    benchmark:
        "logs/benchmarks/claims/{experiment}.tsv"
    shell:
        "flowrepro claims --experiment {input.experiment} --metrics {input.metrics} --out {output} > {log} 2>&1"
