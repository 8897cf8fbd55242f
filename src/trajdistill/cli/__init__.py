"""Command line: a thin shell over the Python API.

    trajdistill buffer   --dataset=CIFAR10 --model=ConvNet --train_epochs=50 --num_experts=10 --zca
    trajdistill distill  --dataset=CIFAR10 --ipc=1 --syn_steps=50 --expert_epochs=1 ...
    trajdistill evaluate --syn RUN_DIR/synthetic_best.pt --dataset=CIFAR10 --data_path=...
    trajdistill baseline --kind random|mean|full --dataset=... --ipc=1
    trajdistill report   RUN_DIR
    trajdistill gzoo2 build --catalog ... --images ... --out ...
    trajdistill demo

The flags of the seed documents are accepted as written there (`--Iteration`, `--lr_teacher`,
`--buffer_path`, ...). `--preset NAME` fills the published settings; explicit flags win.

One module per subcommand (buffer.py; distill.py; evaluation.py: evaluate and baseline, with
ddranking.py for `--protocol ddranking`; runs.py: report, export, demo; the Galaxy Zoo builder's
in gzoo2/cli.py); common.py holds the flags and steps they share. This module builds the parser
and turns the package's errors into one line.
"""
from __future__ import annotations

import os
import re
import sys
import warnings

# OpenMP threads that busy-wait make a shared CPU many times slower (measured 3-6x on the
# lean step with another job running); passive waiting costs nothing measurable when alone.
# It must be set before torch is imported; a user's own setting wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from ..distributed import env_world  # noqa: E402
from ..host_memory import keep_freed_memory  # noqa: E402
from ..precision import set_tf32, tf32_requested  # noqa: E402
from .buffer import add_buffer_parser  # noqa: E402
from .common import Parser  # noqa: E402
from .distill import add_distill_parser  # noqa: E402
from .evaluation import add_baseline_parser, add_evaluate_parser  # noqa: E402
from .runs import add_demo_parser, add_export_parser, add_report_parser  # noqa: E402


def build_parser():
    """The `trajdistill` parser: every subcommand's flags."""
    parser = Parser(prog="trajdistill", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for add in (add_buffer_parser, add_distill_parser, add_evaluate_parser, add_baseline_parser,
                add_report_parser, add_export_parser, add_demo_parser):
        add(sub)
    try:
        from ..gzoo2.cli import add_gzoo2_parser
    except ImportError:  # the Galaxy Zoo builder is optional at import time
        add_gzoo2_parser = None
    if add_gzoo2_parser is not None:
        add_gzoo2_parser(sub)
    return parser


def _out_of_memory(e: BaseException) -> bool:
    """Python's MemoryError, CUDA's OutOfMemoryError, or the CPU allocator's refusal (a plain
    RuntimeError whose message says so): a limit of the machine, not a bug."""
    return (isinstance(e, (MemoryError, torch.OutOfMemoryError))
            or "can't allocate memory" in str(e) or "out of memory" in str(e).lower())


def main(argv: list[str] | None = None) -> int:
    """Run a command. Errors the user can fix (the package's own types) print one line and
    return 2; Ctrl-C prints one line and returns 130; anything else is a bug and keeps its
    traceback. A torchrun worker leaves at once with its status (`_leave`)."""
    code = _run(argv)
    if env_world()[1] > 1:
        _leave(code)
    return code


def _leave(code: int) -> None:
    """End the process with `code`, its output flushed, without the interpreter's own
    shutdown. Used after Ctrl-C and by every torchrun worker: a worker's process group is
    destroyed already (distributed.shutdown), but tearing down the modules and threads left
    behind could still abort the process now and then ("terminate called without an active
    exception", SIGABRT): 3 of about 150 torchrun runs of `baseline` and `distill` on a busy
    2-core machine, after their work and output were complete. torchrun then reports the
    whole job as failed."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _run(argv: list[str] | None) -> int:
    from ..errors import TrajdistillError, one_line_warning
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # each step's large blocks reuse pages instead of new ones (host_memory.py)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            set_tf32(tf32_requested())
            args.func(args)
    except TrajdistillError as e:
        print("error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as e:
        if not _out_of_memory(e):
            raise  # a bug: keep its traceback
        asked = re.search(r"allocate (\d+) bytes", str(e))
        what = f" ({int(asked.group(1)) / 2**30:.3g} GiB asked for)" if asked else ""
        print(f"error: out of memory{what}: the settings ask for more memory than this device "
              "has; lower --ipc, --batch_syn, --res, --canvas_size or --num_eval, or use a "
              "larger device", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        # leave at once: seen under pytest (about 1 run in 4), the interpreter's own shutdown
        # after a caught Ctrl-C could still end the process by SIGINT (status -2, not 130)
        _leave(130)
    return 0

