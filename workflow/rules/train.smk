# Trained models live under results/models/<dataset>/<key>.pt, one per distinct model
# (flowrepro.config.model_key): experiments that define the same model share its file and job.
# Where the scale has seed_jobs (small, paper), each seed is its own job and file: <key>.seed<k>.pt,
# and a reflow model's seed k trains on the pairs of its teacher's seed k.


def model_stem(experiment, model, dataset):
    return f"results/models/{dataset}/{model_key(EXPERIMENTS[experiment], model, dataset, SCALE)}"


def model_files(experiment, model, dataset):
    """The files holding a model's seeds: one per seed with seed_jobs, else one for all."""
    stem = model_stem(experiment, model, dataset)
    return [f"{stem}.seed{seed}.pt" for seed in SEEDS] if SEED_JOBS else [f"{stem}.pt"]


def owner_of(key):
    """(experiment, model name) of the first experiment in this config that defines model ``key``."""
    owner = MODEL_OWNERS[key]
    return EXPERIMENTS[owner["experiment"]], owner["model"]


def train_inputs(wildcards):
    """Data, reflow pairs, initial weights, a teacher model and the plugin files of the model's pieces: nothing that
    names the experiment, so the job is the same whichever experiment lists the model."""
    experiment, name = owner_of(wildcards.key)
    spec = experiment["models"][name]
    seed = f".seed{wildcards.seed}" if "seed" in wildcards.keys() else ""
    inputs = {"data": f"data/{wildcards.dataset}.npz", "plugins": [p["file"] for p in model_plugins(experiment, name)]}
    if spec.get("coupling") == "reflow":
        inputs["pairs"] = f"{model_stem(experiment['id'], spec['pairs_from'], wildcards.dataset)}{seed}.pairs.npy"
    if "init" in spec:
        inputs["init"] = f"{model_stem(experiment['id'], spec['init'], wildcards.dataset)}{seed}.pt"
    if "teacher" in spec:  # a frozen model the objective calls (PeRFlow's windowed solve)
        inputs["teacher"] = f"{model_stem(experiment['id'], spec['teacher'], wildcards.dataset)}{seed}.pt"
    return inputs


def model_description(wildcards):
    """The model as JSON (flowrepro.config.model_identity and its plugin files): the train job's --model-spec."""
    experiment, name = owner_of(wildcards.key)
    description = model_identity(experiment, name, wildcards.dataset, SCALE)
    return json.dumps(description | {"plugin_files": model_plugins(experiment, name)}, sort_keys=True)


def train_settings(wildcards):
    """What this job reads of the scale and the recipe: a change re-runs it, other sections do not."""
    experiment, name = owner_of(wildcards.key)
    return job_settings(wildcards.dataset, experiment, name) | {"seeds": SEEDS}


rule train:
    input:
        unpack(train_inputs),
    output:
        "results/models/{dataset}/{key}.pt",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    params:
        model_spec=model_description,
        settings=lambda wildcards: {k: v for k, v in train_settings(wildcards).items() if k not in RUN_SETTINGS},
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
        teacher=lambda wildcards, input: f"--teacher {input.teacher}" if "teacher" in input.keys() else "",
        seed="",
    resources:
        # GPUs at small/paper: the recipe's gpus (flow_images, or an experiment's recipes; default 1), all on one node
        # (sbatch --gpus=N --nodes=1); N > 1 runs N DDP processes under torchrun (shell). Tiny/smoke run on CPU nodes.
        gpu=lambda wildcards: 0 if SCALE_NAME in ("tiny", "smoke") else int(train_settings(wildcards).get("gpus", 1)),
        nodes=1,
        # GPU memory and time below are ESTIMATES (nothing measured on a GPU yet; benchmarks/train_throughput.py will).
        # GPU memory of an image job = 1.25 x (fixed + activations x batch / 128 / N), in GB:
        #   fixed = 20 B a parameter (fp32 weights, gradients, Adam's two moments, EMA) + the training set on the
        #   device + 1.5 GB CUDA context and cuDNN workspace; activations = the fp32 forward+backward peak for 128
        #   images (measured on CPU: 44 MB an image for ddpm_cifar10, 19 MB for ddpm_mnist; bf16 keeps less).
        #   small (ddpm_mnist, 8.95 M): 0.18 + 0.25 (MNIST 60k x 32x32) + 1.5 = 1.95; 2.4 -> 5.4 GB at batch 128.
        #   paper (ddpm_cifar10, 35.75 M): 0.72 + 0.61 (CIFAR-10 50k) + 1.5 = 2.8; 5.6 -> 10.5 GB at 128, 31 GB at 512.
        # Not an sbatch option: it documents the GPU a job needs and caps local runs (--resources gpu_mem_mb=...).
        gpu_mem_mb=lambda wildcards: 0 if SCALE_NAME in ("tiny", "smoke") else (round(1.25 * 1024 * (
            {"small": 1.95}.get(SCALE_NAME, 2.8) + {"small": 2.4}.get(SCALE_NAME, 5.6)
            * train_settings(wildcards)["batch_size"] / 128 / int(train_settings(wildcards).get("gpus", 1))))
            if wildcards.dataset in IMAGE_DATASETS else 2000),
        # Time of an image job = 10 min start-up + 1.25 x steps x s/step x batch / 128 / (N x 0.9 if N > 1), at most
        # 24 h (a common partition limit): a longer training ends at the limit with a checkpoint and the profile's
        # retries resume it (workflow/profiles/slurm). Assumed s/step at batch 128 on one A100 in bf16:
        #   ddpm_cifar10 0.15 s: 4.65 TFLOP a step (36.3 GFLOP an image forward+backward, torch's FlopCounterMode) at
        #   31 TFLOP/s, 10% of bf16 peak; DDPM (Ho et al. 2020, App. B) trained it at 21 steps/s on a TPU v3-8
        #   ("similar to 8 V100s"), 0.38 s a V100. ddpm_mnist 0.05 s (a quarter of the FLOPs, smaller kernels).
        #   small: 20k steps -> 0.28 h -> 31 min. paper: 400k steps (flow matching) 16.7 h -> 21 h; 1.3 M (rectified
        #   flow) 54 h -> 3 jobs of 24 h; batch 512 x 800k (improved RF) 133 h -> 7 jobs on 1 GPU, 2 with gpus: 4.
        # 2-D flows (an MLP): minutes at every scale.
        runtime=lambda wildcards: {"tiny": 20, "smoke": 20}.get(SCALE_NAME) or (min(24 * 60, 10 + round(
            1.25 * train_settings(wildcards)["steps"] * {"small": 0.05}.get(SCALE_NAME, 0.15)
            * train_settings(wildcards)["batch_size"] / 128 / 60
            / (int(train_settings(wildcards).get("gpus", 1)) * (0.9 if int(train_settings(wildcards).get("gpus", 1)) > 1 else 1))))
            if wildcards.dataset in IMAGE_DATASETS else 60),
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 8000}.get(SCALE_NAME, 32000),
    threads: JOB_THREADS
    log:
        "logs/train/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{key}.tsv"
    shell:
        # gpu > 1: torchrun (--standalone: a free port, so jobs sharing a node do not collide) starts one copy of the
        # command per GPU; "$@" is empty otherwise
        "if [ {resources.gpu} -gt 1 ]; then set -- {sys.executable:q} -m torch.distributed.run --standalone"
        " --nproc_per_node {resources.gpu} --no-python; fi; OMP_NUM_THREADS={threads} \"$@\" {FLOWREPRO} train"
        " --model-spec {params.model_spec:q} --scale {SCALE_FILE}"
        " --data {input.data} {params.seed} {params.pairs} {params.init} {params.teacher} --out {output} > {log} 2>&1"


use rule train as train_seed with:
    output:
        "results/models/{dataset}/{key}.seed{seed}.pt",
    wildcard_constraints:
        key="[0-9a-f]{12}",
        seed="[0-9]+",
    params:
        model_spec=model_description,
        settings=lambda wildcards: {k: v for k, v in train_settings(wildcards).items() if k not in RUN_SETTINGS},
        pairs=lambda wildcards, input: f"--pairs {input.pairs}" if "pairs" in input.keys() else "",
        init=lambda wildcards, input: f"--init {input.init}" if "init" in input.keys() else "",
        teacher=lambda wildcards, input: f"--teacher {input.teacher}" if "teacher" in input.keys() else "",
        seed=lambda wildcards: f"--seed {wildcards.seed}",
    log:
        "logs/train/{dataset}/{key}.seed{seed}.log",
    benchmark:
        "logs/benchmarks/train/{dataset}/{key}.seed{seed}.tsv"


rule reflow_pairs:
    input:
        model="results/models/{dataset}/{key}.pt",
    params:
        settings=lambda wildcards: job_settings(wildcards.dataset) | {"seeds": SEEDS},  # what this job reads of the scale: a change re-runs it, other sections do not
    output:
        "results/models/{dataset}/{key}.pairs.npy",
    wildcard_constraints:
        key="[0-9a-f]{12}",
    resources:
        # A GPU (sbatch --gpus=1) at small/paper scale; tiny runs on CPU-only nodes.
        gpu=0 if SCALE_NAME in ("tiny", "smoke") else 1,
        runtime={"tiny": 10, "smoke": 10, "small": 60}.get(SCALE_NAME, 240),  # minutes
        mem_mb={"tiny": 2000, "smoke": 4000, "small": 8000}.get(SCALE_NAME, 32000),
    threads: JOB_THREADS
    log:
        "logs/reflow_pairs/{dataset}/{key}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{dataset}/{key}.tsv"
    shell:
        "OMP_NUM_THREADS={threads} {FLOWREPRO} reflow-pairs --scale {SCALE_FILE}"
        " --model-file {input.model} --out {output} > {log} 2>&1"


use rule reflow_pairs as reflow_pairs_seed with:
    input:
        model="results/models/{dataset}/{key}.seed{seed}.pt",
    output:
        "results/models/{dataset}/{key}.seed{seed}.pairs.npy",
    wildcard_constraints:
        key="[0-9a-f]{12}",
        seed="[0-9]+",
    log:
        "logs/reflow_pairs/{dataset}/{key}.seed{seed}.log",
    benchmark:
        "logs/benchmarks/reflow_pairs/{dataset}/{key}.seed{seed}.tsv"
