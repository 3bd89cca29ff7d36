rule sample:
    input:
        experiment=experiment_file,
        scale=SCALE_FILE,
        model="results/{experiment}/models/{dataset}/{model}.pt",
    output:
        "results/{experiment}/samples/{dataset}/{model}.npz",
    threads: 2
    log:
        "logs/sample/{experiment}/{dataset}/{model}.log",
    benchmark:
        "logs/benchmarks/sample/{experiment}/{dataset}/{model}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} flowrepro sample --experiment {input.experiment} --scale {input.scale}"
        " --model-file {input.model} --out {output} > {log} 2>&1"
