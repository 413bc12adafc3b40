"""Only the optional C kernels (src/pcsr/csrc/); everything else is in pyproject.toml.

`optional=True`: where no C compiler is found the package installs without them and runs the same
models with torch operations instead (pcsr.kernels.available() says which)."""
from setuptools import Extension, setup

KERNELS = ["src/pcsr/csrc/mlp.c", "src/pcsr/csrc/mlp_bf16.c", "src/pcsr/csrc/gconv.c", "src/pcsr/csrc/parallel.c"]

HEADERS = ["src/pcsr/csrc/parallel.h", "src/pcsr/csrc/mlp.h"]

setup(ext_modules=[Extension("pcsr._kernels", sources=KERNELS, depends=HEADERS, extra_compile_args=["-O3"],
                             optional=True)])
