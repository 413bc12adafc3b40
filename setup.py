"""Only the optional C kernels (src/pcsr/csrc/); everything else is in pyproject.toml.

`optional=True`: where no C compiler is found the package installs without them and runs the same
models with torch operations instead (pcsr.kernels.available() says which)."""
from setuptools import Extension, setup

KERNELS = [f"src/pcsr/csrc/{name}.c" for name in ("mlp", "mlp_bf16", "gconv", "refine", "parallel")]

HEADERS = ["src/pcsr/csrc/parallel.h", "src/pcsr/csrc/mlp.h"]

setup(ext_modules=[Extension("pcsr._kernels", sources=KERNELS, depends=HEADERS, extra_compile_args=["-O3"],
                             optional=True)])
