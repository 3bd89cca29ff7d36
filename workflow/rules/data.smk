from flowrepro.stages.acquire import download_flags


rule acquire:
    output:
        npz="data/{dataset}.npz",
        checksum="data/{dataset}.npz.sha256",
    params:
        n_train=SCALE["flow2d"]["n_train"],
        n_test=SCALE["flow2d"]["n_test"],
        downloads=lambda wildcards: download_flags(SCALE, wildcards.dataset),  # a local mirror and its digests (CI)
    log:
        "logs/acquire/{dataset}.log",
    benchmark:
        "logs/benchmarks/acquire/{dataset}.tsv"
    shell:
        "{FLOWREPRO} acquire --dataset {wildcards.dataset} --out {output.npz}"
        " --n-train {params.n_train} --n-test {params.n_test} {params.downloads} > {log} 2>&1"
