rule report:
    input:
        experiments=[EXPERIMENT_FILES[e] for e in EXPERIMENTS],
        claims=[f"results/{e}/claims.csv" for e in EXPERIMENTS],
        metrics=[f"results/{e}/metrics.csv" for e in EXPERIMENTS],
        figures=[f"results/{e}/figures" for e in EXPERIMENTS],
    params:
        settings={"scale": SCALE["scale"], "seeds": SCALE["seeds"]},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        md="results/report.md",
        html=report("results/report.html", caption="../report/report.rst", category="Report"),
    log:
        "logs/report.log",
    benchmark:
        "logs/benchmarks/report.tsv"
    shell:
        "{FLOWREPRO} report --scale {SCALE_FILE} --experiments {input.experiments} --claims {input.claims}"
        " --metrics {input.metrics} --figures {input.figures} --out-md {output.md} --out-html {output.html} > {log} 2>&1"
