FLOW_FIGURES = ["w2_vs_nfe", "samples", "trajectories"]


def figure_files(experiment, suffixes=("png", "pdf")):
    names = FLOW_FIGURES if EXPERIMENTS[experiment]["kind"] == "flow" else []
    return [f"results/{experiment}/figures/{n}.{s}" for n in names for s in suffixes]


rule plot:
    input:
        experiment=experiment_file,
        metrics="results/{experiment}/metrics.csv",
        data=flow_data,
        samples=flow_samples,
    output:
        report(
            expand("results/{{experiment}}/figures/{figure}.png", figure=FLOW_FIGURES),
            caption="../report/figure.rst",
            category="{experiment}",
        ),
        expand("results/{{experiment}}/figures/{figure}.pdf", figure=FLOW_FIGURES),
    log:
        "logs/plot/{experiment}.log",
    benchmark:
        "logs/benchmarks/plot/{experiment}.tsv"
    shell:
        "flowrepro plot --experiment {input.experiment} --metrics {input.metrics} --data {input.data}"
        " --samples {input.samples} --out-dir results/{wildcards.experiment}/figures > {log} 2>&1"
