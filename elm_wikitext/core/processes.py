"""The one place that knows how many processes run.

Under `accelerate launch` or `torchrun` there is one process per GPU (or per CPU worker);
otherwise there is one. The pipeline asks accelerate once (`current_processes`) and hands the
stages a `Processes`: which share of this work is mine, am I the main process, what did the
others find, wait for them. No stage asks accelerate itself.
"""

from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import torch
from accelerate import PartialState

from elm_wikitext.core.errors import BuildError


def _state() -> PartialState:
    # On a machine without GPUs, processes talk over gloo (accelerate's `cpu=True`).
    return PartialState(cpu=not torch.cuda.is_available())


def share(items, index: int, processes: int):
    """Process `index`'s share of `items` among `processes`: every n-th item (they are of about equal cost)."""
    return items[index::processes]


@dataclass(frozen=True)
class Processes:
    """This run's processes as one of them sees them: its `index` among `count`, and its device
    (its own GPU under a launcher, else the GPU or the CPU). With one process nothing here talks
    to another, so a stage's tests build one directly: `Processes(0, 1, torch.device("cpu"))`."""
    index: int
    count: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.index == 0

    def my_share(self, items: list) -> list:
        """This process's share of `items` (`share`)."""
        return share(items, self.index, self.count)

    def gather(self, obj) -> list:
        """Every process's `obj` (small things only: each process receives all of them)."""
        if self.count == 1:
            return [obj]
        from accelerate.utils import gather_object

        with together("gathering the processes' counts"):
            return gather_object([obj])

    def wait(self) -> None:
        """Wait until every process is here."""
        if self.count > 1:
            with together("waiting for the other processes"):
                _state().wait_for_everyone()

    def main_first(self):
        """The main process runs the block first (filling datasets' cache); the others then reuse it."""
        return _state().main_process_first() if self.count > 1 else nullcontext()


def current_processes() -> Processes:
    """This run's processes, as accelerate's launcher (or its absence) set them up."""
    state = _state()
    return Processes(state.process_index, state.num_processes, state.device)


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


def finish() -> None:
    """Leave the process group before the interpreter shuts down. A gloo group left to the
    shutdown can still hold work of the last collective, and freeing it then aborts the process
    (SIGABRT, "terminate called without an active exception"): 6 of 30 runs of 4 CPU processes
    that gathered and exited did so without this call, none of 30 with it."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        _state().destroy_process_group()
