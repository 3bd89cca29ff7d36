# search: a sampler experiment's schedule search on calibration noise (its `search:` section)
# -> results/<experiment>/schedules.json, read by its benchmark job (flowrepro.samplers.step_search).
SEARCHED = {name: e for name, e in BENCHMARKS.items() if e["kind"] == "sampler" and e.get("search")}


def search_settings(wildcards):
    """What the search reads of the scale: the seeds and the harness's threads (a change re-runs it)."""
    return {"seeds": benchmark_seeds(EXPERIMENTS[wildcards.experiment], SCALE),
            "threads": SCALE.get("samplers", {}).get("threads", 1)}


rule search:
    input:
        experiment=experiment_file,
    params:
        settings=search_settings,
    output:
        "results/{experiment}/schedules.json",
    wildcard_constraints:
        experiment=one_of(SEARCHED),
    threads: JOB_THREADS
    log:
        "logs/search/{experiment}.log",
    benchmark:
        "logs/benchmarks/search/{experiment}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} search --experiment {input.experiment} --scale {SCALE_FILE}"
        " --out {output} > {log} 2>&1"
