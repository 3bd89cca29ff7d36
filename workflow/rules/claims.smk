rule claims:
    input:
        experiment=experiment_file,
        metrics="results/{experiment}/metrics.csv",
    params:
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
        "{FLOWREPRO} claims --experiment {input.experiment} --scale {SCALE_FILE} --metrics {input.metrics}"
        " --out {output} > {log} 2>&1"
