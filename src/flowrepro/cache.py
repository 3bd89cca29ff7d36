"""Publish and fetch workflow outputs through DVC, so a collaborator gets every result without recomputing.

Layout (one ``.dvc`` pointer per unit that can be pulled alone, committed to git):

    data.dvc                     data/                  (everything acquired: every dataset + its .sha256, the
                                                         downloaded archives, pretrained weights + their manifests
                                                         under data/weights/; a pull needs no access to the sources)
    results/<experiment>.dvc     results/<experiment>/  (samples, metrics, claims, figures)
    results/models.dvc           results/models/        (trained models and reflow pairs, shared by experiments)
    results/classifiers.dvc      results/classifiers/   (FID classifiers and their reference statistics)
    results/fid_reference.dvc    results/fid_reference/ (Inception statistics of the training sets, small and paper)
    results/report.md.dvc        results/report.md
    results/report.html.dvc      results/report.html

``push`` runs ``dvc add`` on those paths and ``dvc push``es them; ``pull`` runs ``dvc pull`` and then makes
Snakemake accept what arrived (see :func:`mark_up_to_date`). DVC is used only through its command line.

Why pulled files need a fix-up: Snakemake reruns a job when an input is newer than its outputs, and
``dvc pull`` writes files in no particular order (a model may land after the samples made from it). So
after a pull every pulled file and directory gets one and the same mtime, the time of the pull: no input
is then newer than an output among them, while every git-tracked input (config/, workflow/, Snakefile),
checked out before the pull, stays older. Editing a config file after the pull makes it newer again, so
Snakemake reruns exactly the jobs that depend on it. Snakemake's other rerun triggers (params, code,
input, software-env) compare with records in .snakemake/metadata; a fresh clone has none, so they stay
quiet; in a checkout that has records, those of the pulled files describe the files the pull replaced,
so they are dropped (``snakemake --cleanup-metadata``).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Iterable, Sequence

DATA = "data"
RESULTS = "results"
REPORT = ("results/report.md", "results/report.html")
#: Outputs shared by experiments (trained models, FID classifiers, Inception reference statistics): pushed and
#: pulled with any of them, where they exist.
SHARED = ("results/models", "results/classifiers", "results/fid_reference")


class CacheError(RuntimeError):
    """A dvc or snakemake call failed, or the requested outputs are not there."""


def experiment_path(experiment: str) -> str:
    return f"{RESULTS}/{experiment}"


def dvc_file(path: str) -> str:
    """The pointer ``dvc add path`` writes next to ``path``: data -> data.dvc, results/x -> results/x.dvc."""
    return f"{path.rstrip('/')}.dvc"


def tracked_paths(experiments: Iterable[str], *, data: bool = True, report: bool = True,
                  shared=None) -> list[str]:
    """The workspace paths that make up a push or a pull, in a stable order.

    ``shared``: a test for each folder of :data:`SHARED` (push: it exists; pull: it was published).
    """
    experiments = list(experiments)
    paths = [DATA] if data else []
    paths += [experiment_path(e) for e in experiments]
    if experiments and shared is not None:
        paths += [p for p in SHARED if shared(p)]
    if report:
        paths += list(REPORT)
    return paths


def configured_experiments(root: Path) -> list[str]:
    """The experiments named in config/config.yaml (the workflow's default)."""
    import yaml

    config = yaml.safe_load((root / "config/config.yaml").read_text())
    return list(config.get("experiments", []))


def published_experiments(root: Path) -> list[str]:
    """Experiments that have a results/<experiment>.dvc pointer."""
    shared = {Path(p).name for p in SHARED}
    return sorted(p.name[: -len(".dvc")] for p in (root / RESULTS).glob("*.dvc")
                  if not p.name.startswith("report.") and p.name[: -len(".dvc")] not in shared)


def _run(command: Sequence[str], root: Path, what: str) -> subprocess.CompletedProcess:
    if shutil.which(command[0]) is None:
        raise CacheError(f"`{command[0]}` is not on PATH; install it (pip install 'flowrepro[dvc]')")
    env = dict(os.environ, DVC_NO_ANALYTICS="1")
    proc = subprocess.run(list(command), cwd=root, capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise CacheError(f"{what} failed ({' '.join(command)}):\n{(proc.stdout + proc.stderr).strip()[-4000:]}")
    return proc


def dvc(*args: str, root: Path | str = ".") -> subprocess.CompletedProcess:
    """Run ``dvc args...`` in ``root``; raise CacheError with its output when it fails."""
    return _run(["dvc", *args], Path(root), f"dvc {args[0] if args else ''}")


def _remote_args(remote: str | None) -> list[str]:
    return ["--remote", remote] if remote else []


def _final_targets(experiments: Iterable[str], report: bool) -> list[str]:
    """Snakemake targets whose jobs produce everything under the pushed paths."""
    targets = []
    for e in experiments:
        targets += [f"{RESULTS}/{e}/claims.csv", f"{RESULTS}/{e}/figures"]
    if report:
        targets += list(REPORT)
    return targets


def check_up_to_date(experiments: Iterable[str], root: Path | str = ".", report: bool = True) -> None:
    """Refuse to publish outputs that Snakemake would still recompute (stale or half-finished results)."""
    targets = _final_targets(experiments, report)
    proc = _run(["snakemake", "--dry-run", "--cores", "1", *targets], Path(root), "snakemake --dry-run")
    if "Nothing to be done" not in proc.stdout + proc.stderr:
        raise CacheError("the workflow is not up to date for these outputs; run `snakemake --cores N` first "
                         "(or push with --no-check):\n" + (proc.stdout + proc.stderr)[-3000:])


def push(experiments: Sequence[str] | None = None, remote: str | None = None, *, root: Path | str = ".",
         data: bool = True, report: bool | None = None, check: bool = True) -> list[str]:
    """Track data/, results/<experiment>/ for each experiment and the report with DVC and upload them.

    ``experiments``: default every experiment of config/config.yaml. ``remote``: a DVC remote name,
    default the repository's default remote (``dvc remote add -d``). ``report``: default True when every
    configured experiment is pushed. ``check``: first make sure ``snakemake --dry-run`` has nothing to do
    for the pushed outputs. Returns the .dvc files to commit to git.
    """
    root = Path(root)
    configured = configured_experiments(root)
    experiments = configured if experiments is None else list(experiments)
    if report is None:
        report = set(configured) <= set(experiments)
    paths = tracked_paths(experiments, data=data, report=report, shared=lambda p: (root / p).exists())
    missing = [p for p in paths if not (root / p).exists()]
    if missing:
        raise CacheError(f"nothing to push for {', '.join(missing)}: run the workflow first")
    if check:
        check_up_to_date(experiments, root, report)
    dvc("add", "--quiet", *paths, root=root)
    pointers = [dvc_file(p) for p in paths]
    dvc("push", *_remote_args(remote), *pointers, root=root)
    return pointers


def pull(experiments: Sequence[str] | None = None, remote: str | None = None, *, root: Path | str = ".",
         data: bool = True, report: bool | None = None, force: bool = False, mark: bool = True,
         verify: bool = True) -> list[str]:
    """Download data/, results/<experiment>/ for each experiment and the report; make Snakemake accept them.

    ``experiments``: default (None) every experiment with a results/<experiment>.dvc pointer; ``[]``
    none (e.g. data only). ``report``: default True when ``experiments`` is None. ``force``: overwrite local files that differ (dvc pull
    --force). ``mark``: give the pulled files one common mtime and forget Snakemake's records of the
    files they replaced (:func:`mark_up_to_date`). ``verify``: make DVC re-hash what it downloads
    (:func:`ensure_verify`), so a corrupted remote file fails the pull instead of reaching the workspace.
    Returns the pulled workspace paths.
    """
    root = Path(root)
    if report is None:
        report = experiments is None
    experiments = published_experiments(root) if experiments is None else list(experiments)
    paths = tracked_paths(experiments, data=data, report=report, shared=lambda p: (root / dvc_file(p)).exists())
    pointers = [dvc_file(p) for p in paths]
    missing = [p for p in pointers if not (root / p).exists()]
    if missing:
        raise CacheError(f"not published (no {', '.join(missing)}); publish with `flowrepro cache push` "
                         "and commit the .dvc files")
    if verify:
        ensure_verify(remote, root)
    dvc("pull", *_remote_args(remote), *(["--force"] if force else []), *pointers, root=root)
    if mark:
        mark_up_to_date(paths, root)
    return paths


def ensure_verify(remote: str | None = None, root: Path | str = ".") -> str:
    """Turn on ``verify`` for the remote (in the git-ignored .dvc/config.local) unless already set.

    DVC's default (verify = false) trusts a downloaded file whose name is its hash: a byte flipped on the
    remote would be checked out silently. With verify, ``dvc pull`` re-hashes each download and refuses a
    mismatch (the output is then left missing and Snakemake recomputes it). Returns the remote's name.
    """
    name = remote or dvc("remote", "default", root=root).stdout.strip()
    if not name:
        raise CacheError("no DVC remote: set one with `dvc remote add -d NAME PATH|URL` or pass --remote")
    current = subprocess.run(["dvc", "config", f"remote.{name}.verify"], cwd=root, capture_output=True,
                             text=True, env=dict(os.environ, DVC_NO_ANALYTICS="1"))
    if current.stdout.strip().lower() != "true":
        dvc("remote", "modify", "--local", name, "verify", "true", root=root)
    return name


def _walk(path: Path) -> list[Path]:
    """``path`` and, for a directory, everything below it (directories included)."""
    if not path.is_dir():
        return [path]
    found = [path]
    for dirpath, dirnames, filenames in os.walk(path):
        base = Path(dirpath)
        found += [base / d for d in dirnames] + [base / f for f in filenames]
    return found


def mark_up_to_date(paths: Iterable[str], root: Path | str = ".", when: float | None = None) -> int:
    """Make Snakemake treat ``paths`` (pulled outputs) as up to date, whatever order they arrived in.

    Every file and directory under ``paths`` gets the same mtime ``when`` (default now), later than any
    git checkout before it; then, if this checkout has Snakemake metadata, the records for these paths
    are removed, since they describe the files the pull replaced. Returns how many entries were touched.
    """
    root = Path(root)
    when = time.time() if when is None else when
    entries = [e for p in paths if (root / p).exists() for e in _walk(root / p)]
    for entry in entries:
        os.utime(entry, (when, when), follow_symlinks=False)
    metadata = root / ".snakemake" / "metadata"
    if metadata.is_dir() and any(metadata.iterdir()):
        names = [str(e.relative_to(root)) for e in entries]
        proc = subprocess.run(["snakemake", "--cleanup-metadata", *names], cwd=root, capture_output=True, text=True)
        # Snakemake cleans every record it has and then complains about paths without one: expected here.
        if proc.returncode != 0 and "metadata was not present" not in proc.stdout + proc.stderr:
            raise CacheError(f"snakemake --cleanup-metadata failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
    return len(entries)


def status(remote: str | None = None, root: Path | str = ".") -> str:
    """``dvc status --cloud``: what differs between the local cache and the remote."""
    return dvc("status", "--cloud", *_remote_args(remote), root=root).stdout


CACHE_HELP = """publish or fetch results through DVC (a remote set with `dvc remote add -d NAME PATH|URL`):
  flowrepro cache push [EXPERIMENT...]   dvc add data/, results/<experiment>/, report; dvc push
  flowrepro cache pull [EXPERIMENT...]   dvc pull them; mark them up to date for Snakemake
  flowrepro cache status                 dvc status --cloud
"""


def add_cache_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``flowrepro cache {push,pull,status}`` to the top-level subparsers."""
    p = subparsers.add_parser("cache", help="publish or fetch results through DVC", description=CACHE_HELP,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    actions = p.add_subparsers(dest="cache_action", required=True, metavar="ACTION")
    for name, help_text in (("push", "track data/, results/<experiment>/ and the report with DVC and upload"),
                            ("pull", "download published data/results and mark them up to date for Snakemake")):
        a = actions.add_parser(name, help=help_text, description=help_text)
        a.add_argument("experiments", nargs="*", metavar="EXPERIMENT",
                       help="default: every experiment (push: of config/config.yaml; pull: with a results/<e>.dvc)")
        a.add_argument("-r", "--remote", default=None, help="DVC remote name (default: the default remote)")
        a.add_argument("--root", default=".", help="workflow root (default: .)")
        a.add_argument("--no-data", dest="data", action="store_false", help="leave data/ out")
        report = a.add_mutually_exclusive_group()
        report.add_argument("--report", dest="report", action="store_true", default=None,
                            help="include results/report.{md,html} (default: when all experiments)")
        report.add_argument("--no-report", dest="report", action="store_false")
        if name == "push":
            a.add_argument("--no-check", dest="check", action="store_false",
                           help="skip the `snakemake --dry-run` check that the outputs are up to date")
        else:
            a.add_argument("-f", "--force", action="store_true", help="overwrite local files that differ")
            a.add_argument("--no-verify", dest="verify", action="store_false",
                           help="do not turn on the remote's `verify` (re-hash downloads)")
            a.add_argument("--no-mark", dest="mark", action="store_false",
                           help="leave mtimes as dvc wrote them (Snakemake may then rerun jobs)")
    a = actions.add_parser("status", help="dvc status --cloud", description="dvc status --cloud")
    a.add_argument("-r", "--remote", default=None)
    a.add_argument("--root", default=".")
    return p


def run_cache(args: argparse.Namespace) -> int:
    try:
        if args.cache_action == "push":
            pointers = push(args.experiments or None, args.remote, root=args.root, data=args.data, report=args.report,
                            check=args.check)
            print("pushed; commit these to git:\n  git add " + " ".join(pointers + [".gitignore"]))
        elif args.cache_action == "pull":
            paths = pull(args.experiments or None, args.remote, root=args.root, data=args.data, report=args.report,
                         force=args.force, mark=args.mark, verify=args.verify)
            print("pulled " + " ".join(paths))
        else:
            print(status(args.remote, args.root), end="")
    except CacheError as error:
        print(f"flowrepro cache: {error}")
        return 1
    return 0
