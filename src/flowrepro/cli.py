"""The flowrepro command line: one subcommand per workflow stage.

Every Snakemake rule calls one of these; each can also be run by hand. Heavy libraries are
imported only inside the chosen stage, so ``flowrepro --help`` answers at once.
"""
from __future__ import annotations

import argparse
import sys

STAGES = """stages, in workflow order:
  acquire        make or download a dataset -> data/<name>.npz (+ .sha256)
  train          train one model of a flow experiment, all seeds or one -> results/models/<dataset>/<key>[.seed<k>].pt
  reflow-pairs   (x0, ODE(x0)) pairs from a trained model, for reflow -> results/models/<dataset>/<key>[.seed<k>].pairs.npy
  ems            DPM-Solver-v3's empirical model statistics of one trained model -> results/<experiment>/ems/...safetensors
  sample         run every sampler of the experiment on one model, NFE counted -> samples/...npz
  evaluate       samples -> tidy metrics table results/<experiment>/metrics.csv
  classifier     train an image dataset's FID classifier -> results/classifiers/<dataset>.pt (+ .stats.npz)
  fid            FID of sample files, by the classifier's cached statistics or a local Inception weights file
  fid-reference  Inception statistics of an image dataset's training set -> results/fid_reference/<dataset>.<sha8>.npz
  benchmark      a sampler or optimizer experiment, whole grid in one job -> metrics.csv
  search         a sampler experiment's schedule search on calibration noise -> schedules.json
  claims         check the experiment's claims on its metrics -> claims.csv
  plot           figures -> results/<experiment>/figures/*.png|pdf
  report         every experiment on one page -> results/report.md, results/report.html
  cache          publish (push) or fetch (pull) data and results with DVC
  list           every registered piece (paths, couplings, samplers, ...) with its options, plugins included
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flowrepro", description="Reproduce generative-flow, sampler and optimizer papers.",
                                     epilog=STAGES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")

    def stage(name: str, help_text: str, experiment: bool = True, scale: bool = True) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        if experiment:
            p.add_argument("--experiment", required=True, help="config/experiments/<id>.yaml")
        if scale:
            p.add_argument("--scale", required=True, help="config/scales/<scale>.yaml")
        return p

    p = stage("acquire", "make or download one dataset, or download one set of pretrained weights",
              experiment=False, scale=False)
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--dataset")
    what.add_argument("--weights", metavar="NAME", help="a set of pretrained weights (fid_inception, "
                      "ddpm_cifar10_pretrained) -> data/weights/<name>/ + <name>.sha256; see flowrepro.data.weights")
    p.add_argument("--out", default=None, help="--dataset: data/<name>.npz (required); --weights: the folder "
                                               "(default data/weights/<name>)")
    p.add_argument("--n-train", type=int, default=20000)
    p.add_argument("--n-test", type=int, default=5000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--download-dir", default="data/downloads")
    p.add_argument("--mirror", default=None,
                   help="base URL (http(s):// or file://) or local directory to download from instead of the default mirror")
    p.add_argument("--digest", action="append", default=None, metavar="FILENAME=HEX",
                   help="replace a file's published digest (md5: 32 hex, sha256: 64 hex), e.g. for a local "
                        "stand-in archive; for weights a sha256, required for files without a pinned one; repeatable")

    p = stage("train", "train one model of a flow experiment (all seeds, or one with --seed)", experiment=False)
    p.add_argument("--model-spec", default=None,
                   help="the model as JSON (what the workflow passes: the same whichever experiment lists it)")
    p.add_argument("--experiment", default=None, help="by hand: config/experiments/<id>.yaml, with --model and --dataset")
    p.add_argument("--model", default=None, help="by hand: the model's name in --experiment")
    p.add_argument("--dataset", default=None, help="by hand: the dataset to train on")
    p.add_argument("--data", required=True)
    p.add_argument("--seed", type=int, default=None, help="train only this seed of the scale (its own job at small/paper)")
    p.add_argument("--pairs", default=None, help="reflow pairs .npy (for coupling: reflow)")
    p.add_argument("--init", nargs="+", default=None, help="model file(s) whose weights initialise this one (one per seed, or one for all)")
    p.add_argument("--teacher", nargs="+", default=None, help="model file(s) of the spec's teacher: (one per seed, or one for all)")
    p.add_argument("--out", required=True)
    p.add_argument("--no-progress", action="store_true")

    p = stage("reflow-pairs", "generate reflow pairs from a trained model", experiment=False)
    p.add_argument("--model-file", nargs="+", required=True, help="the model's file, or one file per seed")
    p.add_argument("--out", required=True)

    p = stage("sample", "run the experiment's samplers on one trained or pretrained model")
    model = p.add_mutually_exclusive_group(required=True)
    model.add_argument("--model-file", nargs="+", help="the model's file, or one file per seed")
    model.add_argument("--pretrained", help="an acquired diffusers model folder (data/weights/<name>); needs --data and --method")
    p.add_argument("--data", default=None, help="with --pretrained: the dataset it generates (its shape and data variance)")
    p.add_argument("--method", default=None, help="the model's name in this experiment (default: its name in the experiment that trained it)")
    p.add_argument("--ems", default=None, help="the model's DPM-Solver-v3 statistics (flowrepro ems), for dpm_solver_v3 entries")
    p.add_argument("--out", required=True)

    p = stage("ems", "DPM-Solver-v3's empirical model statistics of one trained model, per seed (cached, checksummed)")
    p.add_argument("--model-file", nargs="+", required=True, help="the model's file, or one file per seed")
    p.add_argument("--data", required=True, help="data/<dataset>.npz: its train split holds the calibration points")
    p.add_argument("--method", default=None, help="the model's name in this experiment")
    p.add_argument("--out", required=True)

    p = stage("fid", "Fréchet distance of sample files (classifier features, or Inception from a local weights file)",
              experiment=False, scale=False)
    p.add_argument("--samples", nargs="+", required=True, help="npz files; every (n, C, H, W) array is scored")
    p.add_argument("--classifier", default=None, help="results/classifiers/<dataset>.pt (its .stats.npz is the reference)")
    p.add_argument("--inception-weights", default=None, help="a local FID-Inception state dict (nothing is downloaded)")
    p.add_argument("--reference", default=None, help="data/<dataset>.npz whose train split is the Inception reference")
    p.add_argument("--reference-stats", default=None,
                   help="an npz with the reference's mu and sigma instead (e.g. results/fid_reference/<dataset>.<sha8>.npz)")

    p = stage("fid-reference", "Inception statistics (mu, sigma) of an image dataset's training set",
              experiment=False, scale=False)
    p.add_argument("--data", required=True, help="data/<dataset>.npz (its train split)")
    p.add_argument("--inception-weights", required=True, help="acquired weights (data/weights/fid_inception/...), "
                                                                "checked against their manifest")
    p.add_argument("--out", required=True, help="results/fid_reference/<dataset>.<sha8>.npz (+ .sha256)")
    p.add_argument("--batch-size", type=int, default=200)
    p.add_argument("--device", default="auto")

    p = stage("classifier", "train the feature classifier of fid_classifier for one image dataset",
              experiment=False, scale=False)
    p.add_argument("--data", required=True, help="data/<dataset>.npz with train/test images and labels")
    p.add_argument("--out", required=True, help="results/classifiers/<dataset>.pt; stats go to <dataset>.stats.npz")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=None, help="training steps (default: the stage's DEFAULT_STEPS)")

    p = stage("evaluate", "compute the tidy metrics table")
    p.add_argument("--data", nargs="+", required=True)
    p.add_argument("--samples", nargs="+", required=True)
    p.add_argument("--classifiers", nargs="*", default=[], help="results/classifiers/<dataset>.pt for image datasets")
    p.add_argument("--fid-references", nargs="*", default=[],
                   help="results/fid_reference/<dataset>.<sha8>.npz for image datasets (scales with fid_inception)")
    p.add_argument("--inception-weights", default=None, help="the acquired FID Inception weights (scales with fid_inception)")
    p.add_argument("--out", required=True)

    p = stage("benchmark", "run a sampler or optimizer experiment's whole grid")
    p.add_argument("--out", required=True)
    p.add_argument("--schedules", default=None, help="results/<id>/schedules.json from `flowrepro search` (experiments with search:)")

    p = stage("search", "search a sampler experiment's schedules on calibration noise (its search: section)")
    p.add_argument("--out", required=True, help="results/<id>/schedules.json")

    p = stage("claims", "check the experiment's claims", scale=False)
    p.add_argument("--scale", default=None, help="config/scales/<scale>.yaml: maps dataset roles (images) in claims to datasets")
    p.add_argument("--metrics", required=True)
    p.add_argument("--out", required=True)

    p = stage("plot", "draw the experiment's figures", scale=False)
    p.add_argument("--metrics", required=True)
    p.add_argument("--data", nargs="*", default=[], help="flow experiments: the data files")
    p.add_argument("--samples", nargs="*", default=[], help="flow experiments: the sample files")
    p.add_argument("--out-dir", required=True)

    p = stage("report", "write the report over all experiments", experiment=False)
    p.add_argument("--experiments", nargs="+", required=True)
    p.add_argument("--claims", nargs="+", required=True)
    p.add_argument("--metrics", nargs="+", required=True)
    p.add_argument("--figures", nargs="*", default=[])
    p.add_argument("--out-md", required=True)
    p.add_argument("--out-html", required=True)
    from flowrepro.cache import add_cache_parser
    from flowrepro.stages import listing

    add_cache_parser(sub)
    listing.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.stage == "acquire":
        from flowrepro.data.download import DigestError
        from flowrepro.stages import acquire

        try:
            digests = acquire.parse_digests(args.digest)
            if args.weights:
                acquire.run_weights(args.weights, args.out, args.mirror, digests)
            elif args.out is None:
                raise SystemExit("acquire: --dataset needs --out data/<name>.npz")
            else:
                acquire.run(args.dataset, args.out, args.n_train, args.n_test, args.seed, args.download_dir,
                            args.mirror, digests)
        except DigestError as error:
            # A mistyped --digest is a usage error: a message, not a traceback.
            raise SystemExit(f"acquire: {error}") from error
    elif args.stage == "train":
        import json

        from flowrepro.config import load_scale
        from flowrepro.generative.training import Interrupted
        from flowrepro.stages import train

        if (args.model_spec is None) == (args.experiment is None) or (args.experiment and not (args.model and args.dataset)):
            raise SystemExit("train: give --model-spec JSON, or --experiment with --model and --dataset")
        description, name = json.loads(args.model_spec) if args.model_spec else None, args.model
        if description is None:
            description = train.describe(args.experiment, args.model, args.dataset, load_scale(args.scale))
        try:
            train.run(description, args.scale, args.data, args.out, args.pairs, args.init,
                      progress=not args.no_progress, seed=args.seed, name=name, teacher_files=args.teacher)
        except Interrupted as stopped:  # SLURM's time limit or preemption: the retry resumes from the checkpoint
            print(f"train: {stopped}", file=sys.stderr)
            return 143
    elif args.stage == "reflow-pairs":
        from flowrepro.stages import sample

        sample.reflow_pairs(args.scale, args.model_file, args.out)
    elif args.stage == "ems":
        from flowrepro.stages import ems

        ems.run(args.experiment, args.scale, args.model_file, args.data, args.out, args.method)
    elif args.stage == "sample":
        from flowrepro.stages import sample

        sample.run(args.experiment, args.scale, args.model_file, args.out, args.method, args.pretrained, args.data, args.ems)
    elif args.stage == "fid":
        from flowrepro.stages import fid

        fid.run(args.samples, args.classifier, args.inception_weights, args.reference, args.reference_stats)
    elif args.stage == "fid-reference":
        from flowrepro.stages import fid_reference

        fid_reference.run(args.data, args.inception_weights, args.out, args.batch_size, args.device)
    elif args.stage == "classifier":
        from flowrepro.stages import classifier

        classifier.run(args.data, args.out, args.seed, args.steps)
    elif args.stage == "evaluate":
        from flowrepro.stages import evaluate

        evaluate.run(args.experiment, args.scale, args.data, args.samples, args.out, args.classifiers,
                     args.fid_references, args.inception_weights)
    elif args.stage == "benchmark":
        from flowrepro.stages import benchmark

        benchmark.run(args.experiment, args.scale, args.out, args.schedules)
    elif args.stage == "search":
        from flowrepro.stages import search

        search.run(args.experiment, args.scale, args.out)
    elif args.stage == "claims":
        from flowrepro.stages import claims

        claims.run(args.experiment, args.metrics, args.out, args.scale)
    elif args.stage == "plot":
        from flowrepro.stages import plot

        plot.run(args.experiment, args.metrics, args.data, args.samples, args.out_dir)
    elif args.stage == "list":
        from flowrepro.stages import listing

        return listing.run(args)
    elif args.stage == "cache":
        from flowrepro.cache import run_cache

        return run_cache(args)
    elif args.stage == "report":
        from flowrepro.stages import report

        if not (len(args.experiments) == len(args.claims) == len(args.metrics)):
            raise SystemExit("report: --experiments, --claims and --metrics must list the same experiments in order")
        report.run(args.scale, args.experiments, args.claims, args.metrics, args.figures, args.out_md, args.out_html)
    return 0


if __name__ == "__main__":
    sys.exit(main())
