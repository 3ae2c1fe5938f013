"""The ``kdcache`` command group."""

from __future__ import annotations

import importlib
import sys

import click

from kdcache import __version__

# name: (module under kdcache.cli, the command's name there, the line `kdcache --help` lists). A command's module
# is imported only when that command is looked up, and imports the library (torch, torchvision, zarr) only in its
# body, so the list, every `--help`, `--version` and usage errors answer at once.
COMMANDS = {
    "quickstart": ("quickstart", "quickstart_cmd", "Offline demo on scikit-learn's digits: teacher, cache, scratch vs "
                   "distilled student."),
    "dump-teacher": ("dump", "dump_teacher_cmd", "Run a teacher once over V augmented views of a dataset and cache "
                     "its outputs."),
    "add-teacher": ("add_teacher", "add_teacher_cmd", "Add a teacher's targets to a cache over the views it already "
                    "recorded."),
    "train-student": ("train", "train_student_cmd", "Train a student from a teacher cache, replaying each cached view "
                      "exactly."),
    "train-teacher": ("train", "train_teacher_cmd", "Train or fine-tune a teacher on labels (a checkpoint dump-teacher "
                      "accepts)."),
    "evaluate": ("evaluate", "evaluate_cmd", "Top-1 / top-5 of a checkpoint, or of any model with weights from any "
                 "file."),
    "info": ("info", "info_cmd", "Metadata, coverage, size on disk and bytes per view of a cache."),
    "models": ("models", "models_cmd", "List every registered model; with --flops its parameters and GFLOPs."),
    "verify": ("verify", "verify_cmd", "Check a cache against its teacher: replay sampled views, check its chunks."),
    "export": ("export", "export_cmd", "Write a cache to one HDF5 file."),
    "plot": ("plot", "plot_cmd", "Draw runs' curves into a PNG; print their final and best figures."),
    "check-data": ("check", "check_data_cmd", "List every unreadable or suspicious image of a dataset before a long "
                   "dump."),
}


class LazyGroup(click.Group):
    """The ``kdcache`` group over :data:`COMMANDS`, importing a command's module when it is looked up."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context | None, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(f"kdcache.cli.{module}"), attr)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, COMMANDS[name][2]) for name in self.list_commands(ctx)])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kdcache")
def cli():
    """kdcache: run a vision teacher once over augmented views, cache its outputs, distil many students.

    \b
    Typical workflow:
      kdcache dump-teacher  --data hdf5:cifar10.h5 --teacher cifar_resnet56 --teacher-weights r56.th --out c.zarr
      kdcache train-student --data hdf5:cifar10.h5 --cache c.zarr --student resnet18 --out runs/r18
    """


def load_commands() -> None:
    """Import every command's module (a process about to fork many commands pays the imports once)."""
    for name in COMMANDS:
        cli.get_command(None, name)


def _drop_abandoned_s3_requests() -> None:
    """After an S3 error, zarr's other in-flight requests are closed at exit and aiobotocore's context
    reset fails in each ("... was created in a different Context"), which Python prints as a traceback
    after kdcache's one-line error. Those are the only unraisable errors this hides."""
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if isinstance(unraisable.exc_value, ValueError) and "was created in a different Context" in str(
                unraisable.exc_value):
            return
        previous(unraisable)

    sys.unraisablehook = hook


def main() -> None:
    _drop_abandoned_s3_requests()
    cli(prog_name="kdcache")


if __name__ == "__main__":
    main()
