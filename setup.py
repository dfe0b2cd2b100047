"""Builds the torch-free native library (csrc/) with CMake; the Triton kernels
are the plain Python package ``unigrpo.ops.triton``.

Environment:
  UNIGRPO_SKIP_CUDA_BUILD=1   never build the CUDA module, even with nvcc present
  UNIGRPO_SKIP_NATIVE_BUILD=1 build nothing native (pure-Python install)
  UNIGRPO_CUDA_ARCHS="80;90"  CUDA architectures (CMake syntax), default 80;90
  CMAKE_BUILD_PARALLEL_LEVEL  parallel compile jobs
"""

import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str) -> None:
        super().__init__(name, sources=[])


def _drop_stale_cache(build_temp: Path) -> None:
    """Under build isolation each `pip install .` runs from a new temporary
    environment, but the CMake cache remembers the cmake and ninja of the first
    one; once those are gone the build fails. Start afresh when they differ."""
    import shutil

    stamp = build_temp / "toolchain.txt"
    toolchain = "\n".join([shutil.which("cmake") or "", shutil.which("ninja") or "", sys.executable])
    if build_temp.exists() and (not stamp.exists() or stamp.read_text() != toolchain):
        shutil.rmtree(build_temp)
    build_temp.mkdir(parents=True, exist_ok=True)
    stamp.write_text(toolchain)


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_temp = Path(self.build_temp).resolve() / "cmake"
        _drop_stale_cache(build_temp)
        build_temp.mkdir(parents=True, exist_ok=True)
        args = [
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            "-DCMAKE_BUILD_TYPE=Release",
            f"-DUNIGRPO_SKIP_CUDA={'ON' if os.environ.get('UNIGRPO_SKIP_CUDA_BUILD') == '1' else 'OFF'}",
            f"-DUNIGRPO_CUDA_ARCHS={os.environ.get('UNIGRPO_CUDA_ARCHS', '80;90')}",
        ]
        try:
            import ninja  # noqa: F401

            args.append("-GNinja")
        except ImportError:
            pass
        subprocess.run(["cmake", str(ROOT), *args], cwd=build_temp, check=True)
        jobs = os.environ.get("CMAKE_BUILD_PARALLEL_LEVEL", str(os.cpu_count() or 1))
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_temp, check=True)


native = os.environ.get("UNIGRPO_SKIP_NATIVE_BUILD") != "1"
setup(
    packages=find_packages(include=["unigrpo", "unigrpo.*"]),
    package_data={"unigrpo": ["assets/**/*", "shapes/assets/**/*"]},
    ext_modules=[CMakeExtension("unigrpo._C")] if native else [],
    cmdclass={"build_ext": CMakeBuild},
)
