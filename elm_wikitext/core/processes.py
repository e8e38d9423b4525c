"""The one place that knows how many processes run.

Under `accelerate launch` or `torchrun` there is one process per GPU (or per CPU worker);
otherwise there is one. Stages ask only: which share of this work is mine, am I the main process,
and wait for the others.
"""

from contextlib import contextmanager

import torch
from accelerate import PartialState

from elm_wikitext.core.errors import BuildError


def _state() -> PartialState:
    # On a machine without GPUs, processes talk over gloo (accelerate's `cpu=True`).
    return PartialState(cpu=not torch.cuda.is_available())


def is_main() -> bool:
    return _state().is_main_process


def device():
    """This process's device: its own GPU under a launcher, else the GPU or the CPU."""
    return _state().device


def count() -> int:
    return _state().num_processes


def share(items, index: int, processes: int):
    """Process `index`'s share of `items` among `processes`: every n-th item (they are of about equal cost)."""
    return items[index::processes]


def my_share(items: list) -> list:
    """This process's share of `items` (`share`)."""
    state = _state()
    return share(items, state.process_index, state.num_processes)


@contextmanager
def together(step: str):
    """A step all processes take together. Where another process (another machine) is gone, the
    transport fails here (gloo: "Connection reset by peer"); say what that means and what to do."""
    try:
        yield
    except RuntimeError as err:
        raise BuildError(f"{step}: another process of this run is gone ({' '.join(str(err).split())[:200]}); "
                         "the chunks finished so far are kept: rerun the same command on every "
                         "machine and only the unfinished chunks are computed") from None


def wait_for_everyone() -> None:
    with together("waiting for the other processes"):
        _state().wait_for_everyone()


@contextmanager
def main_first():
    """The main process runs the block first (filling datasets' cache); the others then reuse it."""
    with _state().main_process_first():
        yield


def gather(obj) -> list:
    """Every process's `obj` (small things only: each process receives all of them)."""
    from accelerate.utils import gather_object

    if count() == 1:
        return [obj]
    with together("gathering the processes' counts"):
        return gather_object([obj])


def finish() -> None:
    """Leave the process group before the interpreter shuts down. A gloo group left to the
    shutdown can still hold work of the last collective, and freeing it then aborts the process
    (SIGABRT, "terminate called without an active exception"): 6 of 30 runs of 4 CPU processes
    that gathered and exited did so without this call, none of 30 with it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _state().destroy_process_group()
