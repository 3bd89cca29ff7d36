from flowrepro.data.weights import download_flags as weights_download_flags, scale_weights
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


rule acquire_weights:
    output:
        manifest="data/weights/{weights}/{weights}.sha256",  # written last: every file arrived, sha256-checked
    params:
        downloads=lambda wildcards: weights_download_flags(SCALE, wildcards.weights),  # a local mirror and digests (CI)
    wildcard_constraints:
        weights=one_of(scale_weights(SCALE)),  # only the sets the scale's downloads/weights lists
    log:
        "logs/acquire_weights/{weights}.log",
    benchmark:
        "logs/benchmarks/acquire_weights/{weights}.tsv"
    shell:
        "{FLOWREPRO} acquire --weights {wildcards.weights} --out data/weights/{wildcards.weights} {params.downloads}"
        " > {log} 2>&1"
