"""Only the optional C kernel (src/pcsr/csrc/mlp.c); everything else is in pyproject.toml.

`optional=True`: where no C compiler is found the package installs without it and runs its MLP
heads with torch operations instead (pcsr.kernels.available() says which)."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("pcsr._mlp", sources=["src/pcsr/csrc/mlp.c", "src/pcsr/csrc/gconv.c", "src/pcsr/csrc/parallel.c"], extra_compile_args=["-O3"],
                             optional=True)])
