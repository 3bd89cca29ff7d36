rule plot:
    input:
        experiment=experiment_file,
        metrics="results/{experiment}/metrics.csv",
        data=flow_data,
        samples=flow_samples,
    output:
        report(
            directory("results/{experiment}/figures"),
            patterns=["{name}.png"],
            caption="../report/figure.rst",
            category="{experiment}",
        ),
    log:
        "logs/plot/{experiment}.log",
    benchmark:
        "logs/benchmarks/plot/{experiment}.tsv"
    shell:
        "{FLOWREPRO} plot --experiment {input.experiment} --metrics {input.metrics} --data {input.data}"
        " --samples {input.samples} --out-dir {output} > {log} 2>&1"
