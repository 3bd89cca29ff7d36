def flow_data(wildcards):
    e = EXPERIMENTS[wildcards.experiment]
    return [f"data/{d}.npz" for d in e["datasets"]] if e["kind"] == "flow" else []


def flow_samples(wildcards):
    e = EXPERIMENTS[wildcards.experiment]
    if e["kind"] != "flow":
        return []
    return [f"results/{e['id']}/samples/{d}/{m}.npz" for d in e["datasets"] for m in e["models"]]


def flow_classifiers(wildcards):
    """The FID classifier of each image dataset the experiment uses."""
    e = EXPERIMENTS[wildcards.experiment]
    return [f"results/classifiers/{d}.pt" for d in e.get("datasets", []) if d in IMAGE_DATASETS]


def flow_experiment_settings(wildcards):
    return {d: flow_settings(SCALE, d) for d in EXPERIMENTS[wildcards.experiment]["datasets"]} | {"seeds": SEEDS}


rule classifier:
    input:
        data="data/{dataset}.npz",
    output:
        model="results/classifiers/{dataset}.pt",
        stats="results/classifiers/{dataset}.stats.npz",
    params:
        steps=lambda wildcards: f"--steps {flow_settings(SCALE, wildcards.dataset)['classifier_steps']}"
        if "classifier_steps" in flow_settings(SCALE, wildcards.dataset) else "",
    wildcard_constraints:
        dataset="|".join(IMAGE_DATASETS),
    threads: JOB_THREADS
    resources:
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
    log:
        "logs/classifier/{dataset}.log",
    benchmark:
        "logs/benchmarks/classifier/{dataset}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} classifier --data {input.data} --out {output.model} {params.steps} > {log} 2>&1"


rule evaluate:
    input:
        experiment=experiment_file,
        data=flow_data,
        samples=flow_samples,
        classifiers=flow_classifiers,
    params:
        settings=flow_experiment_settings,  # what this job reads of the scale: a change re-runs it, other sections do not
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
        "OMP_NUM_THREADS={threads} {FLOWREPRO} evaluate --experiment {input.experiment} --scale {SCALE_FILE}"
        " --data {input.data} --samples {input.samples} --classifiers {input.classifiers} --out {output} > {log} 2>&1"


def benchmark_settings(wildcards):
    section = BENCHMARK_KINDS[EXPERIMENTS[wildcards.experiment]["kind"]][3]  # the runner's scale section
    return {"seeds": SCALE["seeds"], **SCALE.get(section, {})}


def benchmark_data(wildcards):
    """Data files an optimizer experiment's problems read at this scale (CIFAR-10 at paper scale)."""
    e = EXPERIMENTS[wildcards.experiment]
    if e["kind"] != "optimizer":
        return []
    from flowrepro.optim.experiment import data_files

    return data_files(e, {"scale": SCALE["scale"], **benchmark_settings(wildcards)})


rule benchmark:
    input:
        experiment=experiment_file,
        data=benchmark_data,
        plugins=plugin_files,
    params:
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
        "OMP_NUM_THREADS={threads} {FLOWREPRO} benchmark --experiment {input.experiment} --scale {SCALE_FILE}"
        " --out {output} > {log} 2>&1"
