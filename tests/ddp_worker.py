"""One rank of tests/test_ddp.py, started by torchrun: the train stage, with each file it writes logged.

    python -m torch.distributed.run --standalone --nproc_per_node 2 tests/ddp_worker.py \
        DESCRIPTION_JSON SCALE DATA OUT LOG_DIR [SIGNAL_RANK SIGNAL_STEP]

Writes ``LOG_DIR/writes.rank<r>.txt`` (one line per file written through flowrepro.io). With
SIGNAL_RANK and SIGNAL_STEP, that rank sends itself SIGUSR1 after its SIGNAL_STEP-th EMA update
(a SLURM preemption notice that reaches one rank first).
"""
import json
import os
import signal
import sys
from pathlib import Path

from flowrepro import io
from flowrepro.generative import training
from flowrepro.stages import train


def _log_writes(log: Path) -> None:
    for name in ("save_tree", "save_model_file", "save_npz", "write_bytes", "write_text"):
        original = getattr(io, name)

        def logged(path, *args, _original=original, _name=name, **kwargs):
            with open(log, "a") as out:
                out.write(f"{_name} {path}\n")
            return _original(path, *args, **kwargs)

        setattr(io, name, logged)


def _signal_after(step: int) -> None:
    original, calls = training.update_ema, []

    def counted(*args, **kwargs):
        original(*args, **kwargs)
        calls.append(1)
        if len(calls) == step:
            os.kill(os.getpid(), signal.SIGUSR1)

    training.update_ema = counted  # train_flow looks it up at each step


def main(argv: list[str]) -> int:
    description, scale, data, out, log_dir = argv[:5]
    rank = int(os.environ["RANK"])
    log = Path(log_dir) / f"writes.rank{rank}.txt"
    log.write_text("")
    _log_writes(log)
    if len(argv) > 5 and int(argv[5]) == rank:
        _signal_after(int(argv[6]))
    try:
        train.run(json.loads(description), scale, data, out, progress=False)
    except training.Interrupted as stopped:
        print(f"rank {rank}: {stopped}", file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
