"""``python -m flowrepro``: the workflow calls this with the interpreter that runs Snakemake, so a job never depends on PATH."""
import sys

from flowrepro.cli import main

sys.exit(main())
