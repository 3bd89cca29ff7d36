from flowrepro.stages.fid_reference import reference_file, settings as fid_inception_settings


def experiment_datasets(wildcards):
    """The datasets of a flow experiment's jobs: its own and its pretrained networks' (none for a benchmark)."""
    e = EXPERIMENTS[wildcards.experiment]
    return flow_datasets(e, SCALE) if e["kind"] == "flow" else []


def flow_data(wildcards):
    return [f"data/{d}.npz" for d in experiment_datasets(wildcards)]


def flow_samples(wildcards):
    e = EXPERIMENTS[wildcards.experiment]
    if e["kind"] != "flow":
        return []
    return [f"results/{e['id']}/samples/{d}/{m}.npz" for d, m in flow_runs(e, SCALE)]


def flow_classifiers(wildcards):
    """The FID classifier of each image dataset the experiment uses."""
    return [f"results/classifiers/{d}.pt" for d in experiment_datasets(wildcards) if d in IMAGE_DATASETS]


def flow_experiment_settings(wildcards):
    return {d: job_settings(d) for d in experiment_datasets(wildcards)} | {"seeds": SEEDS}


# fid_inception (small, paper, smoke): training-set Inception statistics per dataset, named by the weights' sha256.
FID_INCEPTION = fid_inception_settings(SCALE, SCALE_FILE)  # None at tiny: no rows, no jobs


def fid_inputs(wildcards):
    """The Inception weights' manifest and each image dataset's reference statistics (none without fid_inception)."""
    images = [d for d in experiment_datasets(wildcards) if d in IMAGE_DATASETS]
    if FID_INCEPTION is None or not images:
        return []
    return [FID_INCEPTION["manifest"]] + [reference_file(d, FID_INCEPTION["sha256"]) for d in images]


def fid_flags(wildcards):
    files = fid_inputs(wildcards)
    return f"--inception-weights {FID_INCEPTION['weights']} --fid-references {' '.join(files[1:])}" if files else ""


rule fid_reference:
    input:
        data="data/{dataset}.npz",
        weights=lambda wildcards: FID_INCEPTION["manifest"],
    output:
        stats="results/fid_reference/{dataset}.{sha8}.npz",
        checksum="results/fid_reference/{dataset}.{sha8}.npz.sha256",
    params:
        weights=lambda wildcards: FID_INCEPTION["weights"],
        batch=lambda wildcards: FID_INCEPTION["batch_size"],
        device=SCALE.get("device", "auto"),
    wildcard_constraints:
        dataset="|".join(IMAGE_DATASETS),
        sha8=FID_INCEPTION["sha256"][:8] if FID_INCEPTION else "(?!)",  # only the weights this scale uses
    threads: JOB_THREADS
    resources:
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
    log:
        "logs/fid_reference/{dataset}.{sha8}.log",
    benchmark:
        "logs/benchmarks/fid_reference/{dataset}.{sha8}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} fid-reference --data {input.data} --inception-weights {params.weights}"
        " --batch-size {params.batch} --device {params.device} --out {output.stats} > {log} 2>&1"


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
        fid=fid_inputs,
    params:
        settings=flow_experiment_settings,  # what this job reads of the scale: a change re-runs it, other sections do not
        fid_inception=lambda wildcards: FID_INCEPTION,  # its settings and weights: a change re-runs the job
        fid_flags=fid_flags,
    output:
        report(
            "results/{experiment}/metrics.csv",
            caption="../report/metrics.rst",
            category="{experiment}",
        ),
    wildcard_constraints:
        experiment=one_of(FLOW),
    threads: JOB_THREADS
    resources:
        gpu=1 if FID_INCEPTION and SCALE_NAME not in ("tiny", "smoke") else 0,  # Inception on 50,000 samples a run
    log:
        "logs/evaluate/{experiment}.log",
    benchmark:
        "logs/benchmarks/evaluate/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} evaluate --experiment {input.experiment} --scale {SCALE_FILE}"
        " --data {input.data} --samples {input.samples} --classifiers {input.classifiers} {params.fid_flags}"
        " --out {output} > {log} 2>&1"


def benchmark_settings(wildcards):
    section = BENCHMARK_KINDS[EXPERIMENTS[wildcards.experiment]["kind"]][3]  # the runner's scale section
    return {"seeds": benchmark_seeds(EXPERIMENTS[wildcards.experiment], SCALE), **SCALE.get(section, {})}


def benchmark_data(wildcards):
    """Data files an optimizer experiment's problems read at this scale (CIFAR-10 at paper scale)."""
    e = EXPERIMENTS[wildcards.experiment]
    if e["kind"] != "optimizer":
        return []
    from flowrepro.optim.experiment import data_files

    return data_files(e, {"scale": SCALE["scale"], **benchmark_settings(wildcards)})


def benchmark_schedules(wildcards):
    """The search stage's schedule file, for sampler experiments with a search: section (workflow/rules/search.smk)."""
    return [f"results/{wildcards.experiment}/schedules.json"] if wildcards.experiment in SEARCHED else []


rule benchmark:
    input:
        experiment=experiment_file,
        data=benchmark_data,
        plugins=plugin_files,
        schedules=benchmark_schedules,
    params:
        settings=benchmark_settings,  # what this job reads of the scale: a change re-runs it, other sections do not
        schedules=lambda wildcards, input: f"--schedules {input.schedules}" if input.schedules else "",
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
        " {params.schedules} --out {output} > {log} 2>&1"
