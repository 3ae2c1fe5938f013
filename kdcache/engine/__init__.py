"""The dump engine: teachers, view building in workers, and ``dump_teacher``."""

from kdcache._teacher import LoadedTeacher, TeacherSpec, build_teacher
from kdcache.engine._add_teacher import AddTeacherConfig, add_teacher
from kdcache.engine._dump import DumpConfig, DumpSummary, dump_teacher

__all__ = ["AddTeacherConfig", "add_teacher", "DumpConfig", "DumpSummary", "LoadedTeacher", "TeacherSpec", "build_teacher", "dump_teacher"]
