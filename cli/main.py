"""The ``kdcache`` command group."""

from __future__ import annotations

import sys

import click
from kdcache.cli.add_teacher import add_teacher_cmd
from kdcache.cli.check import check_data_cmd
from kdcache.cli.dump import dump_teacher_cmd
from kdcache.cli.evaluate import evaluate_cmd
from kdcache.cli.export import export_cmd
from kdcache.cli.info import info_cmd
from kdcache.cli.models import models_cmd
from kdcache.cli.plot import plot_cmd
from kdcache.cli.quickstart import quickstart_cmd
from kdcache.cli.train import train_student_cmd, train_teacher_cmd
from kdcache.cli.verify import verify_cmd

from kdcache import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="kdcache")
def cli():
    """kdcache: run a vision teacher once over augmented views, cache its outputs, distil many students.

    \b
    Typical workflow:
      kdcache dump-teacher  --data hdf5:cifar10.h5 --teacher cifar_resnet56 --teacher-weights r56.th --out c.zarr
      kdcache train-student --data hdf5:cifar10.h5 --cache c.zarr --student resnet18 --out runs/r18
    """


for _cmd in (quickstart_cmd, dump_teacher_cmd, add_teacher_cmd, train_student_cmd, train_teacher_cmd, evaluate_cmd, info_cmd,
             models_cmd, verify_cmd, export_cmd, plot_cmd, check_data_cmd):
    cli.add_command(_cmd)


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
