rule claims:
    input:
        experiment=experiment_file,
        metrics="results/{experiment}/metrics.csv",
    params:
        scale_file=SCALE_FILE,
        roles=SCALE.get("roles", {}),  # claims select datasets by role: a change of mapping re-runs them
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
        "flowrepro claims --experiment {input.experiment} --scale {params.scale_file} --metrics {input.metrics}"
        " --out {output} > {log} 2>&1"
