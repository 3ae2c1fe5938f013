"""The dump engine: teachers, view building in workers, and ``dump_teacher``."""

from kdcache._teacher import LoadedTeacher, TeacherSpec, build_teacher
from kdcache.engine._dump import DumpConfig, DumpSummary, dump_teacher

__all__ = ["DumpConfig", "DumpSummary", "LoadedTeacher", "TeacherSpec", "build_teacher", "dump_teacher"]
