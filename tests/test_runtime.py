"""Process settings of the `pcsr` command: freed memory kept in the heap, and the first image's
working memory faulted in ahead in one call. Each case runs in a fresh interpreter (the heap is
process state), loading runtime.py alone so that no torch import blurs the page-fault counts."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

RUNTIME = Path(__file__).resolve().parents[1] / "src" / "pcsr" / "runtime.py"
MB = 1 << 20

SCRIPT = r"""
import ctypes, importlib.util, json, resource, sys
spec = importlib.util.spec_from_file_location("runtime", sys.argv[1])
runtime = importlib.util.module_from_spec(spec)
spec.loader.exec_module(runtime)
size, mode = int(sys.argv[2]), sys.argv[3]
kept = runtime.keep_freed_memory()
populated = runtime.prefault_heap(size) if mode == "prefault" else None
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
ptr = libc.malloc(size)  # as torch's CPU allocator takes memory (numpy would ask for huge pages)
ctypes.memset(ptr, 1, size)
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
print(json.dumps({"kept": kept, "populated": populated, "faults": faults}))
"""


def _run(size: int, mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(RUNTIME), str(size), mode],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def _glibc_with_populate() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        return bool(_run(8 * MB, "prefault")["populated"])
    except (subprocess.CalledProcessError, ValueError):
        return False


needs_populate = pytest.mark.skipif(not _glibc_with_populate(),
                                    reason="needs Linux with glibc and MADV_POPULATE_WRITE (5.14+)")


@needs_populate
@pytest.mark.parametrize("size", [40 * MB, 300 * MB])  # one chunk, and several (256 MB each)
def test_prefaulted_heap_takes_the_next_allocations_without_faults(size):
    pages = size // 4096
    plain, ready = _run(size, "plain"), _run(size, "prefault")
    assert plain["kept"] and ready["kept"] and ready["populated"] is True
    assert plain["faults"] > 0.9 * pages  # a fresh heap faults every page it hands out
    assert ready["faults"] < 0.05 * pages


def test_nothing_to_prefault():
    sys.path.insert(0, str(RUNTIME.parent.parent))
    from pcsr import runtime
    assert runtime.prefault_heap(0) is False and runtime.prefault_heap(-5) is False
