"""The native sparse kernel (``blocks/csrc/spmm.c``): exact against torch, and the MKL fallback when it cannot build."""

from __future__ import annotations

import platform
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import rel_err

from blocks import SparseConv2d, SparseLinear, native, prune_magnitude

needs_cc = pytest.mark.skipif(native._compiler() is None, reason="no C compiler on this machine")
on_x86 = pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="x86-64 builds")
SELFCHECK = Path(__file__).with_name("csrc") / "spmm_selfcheck.c"
#: -march -> the ISA the kernel reports for it (its vector width and strip follow from that)
ISA_OF = {"x86-64": "sse2", "x86-64-v2": "sse2", "haswell": "avx2-fma", "x86-64-v4": "avx512"}


@pytest.fixture
def fresh_kernel(monkeypatch):
    """Forget the loaded kernel before and after (a test may change ZOO_SPARSE_KERNEL or the cache)."""
    native.reset()
    yield monkeypatch
    monkeypatch.undo()
    native.reset()


def _csr(rows: int, cols: int, density: float, empty_rows: int = 0) -> torch.Tensor:
    w = torch.randn(rows, cols)
    w[torch.rand_like(w) > density] = 0
    w[:empty_rows] = 0  # rows without a single non-zero
    return w


@needs_cc
@pytest.mark.parametrize("n", [1, 5, 16, 17, 48, 49, 64, 65, 196, 300, 3136])
@pytest.mark.parametrize("threads", [1, 2])
def test_native_product_matches_torch(n: int, threads: int) -> None:
    w = _csr(37, 53, 0.15, empty_rows=2)
    csr = w.to_sparse_csr()
    parts = (csr.crow_indices().int(), csr.col_indices().int(), csr.values())
    x, bias = torch.randn(53, n), torch.randn(37)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = native.native_spmm(*parts, 53, x, bias)
        no_bias = native.native_spmm(*parts, 53, x, None)
    finally:
        torch.set_num_threads(before)
    assert rel_err(out, w @ x + bias[:, None]) <= 1e-6
    assert rel_err(no_bias, w @ x) <= 1e-6
    assert torch.equal(out[:2], bias[:2, None].expand(2, n))  # empty rows hold the bias


@needs_cc
def test_native_product_checks_its_arguments() -> None:
    csr = _csr(8, 12, 0.5).to_sparse_csr()
    parts = (csr.crow_indices().int(), csr.col_indices().int(), csr.values())
    with pytest.raises(ValueError, match=r"x must be \(12, n\)"):
        native.native_spmm(*parts, 12, torch.randn(11, 4), None)  # would read past x
    with pytest.raises(ValueError, match="indptr must be a contiguous CPU torch.int32"):
        native.native_spmm(csr.crow_indices(), *parts[1:], 12, torch.randn(12, 4), None)  # int64 indices
    with pytest.raises(ValueError, match="x must be a contiguous"):
        native.native_spmm(*parts, 12, torch.randn(4, 12).t(), None)
    with pytest.raises(ValueError, match="bias must have 8 elements"):
        native.native_spmm(*parts, 12, torch.randn(12, 4), torch.randn(7))


@needs_cc
def test_deployed_layers_use_the_native_kernel(fresh_kernel) -> None:
    assert native.kernel_name() == "native", native.kernel_status()
    conv, lin = SparseConv2d(128, 96), SparseLinear(256, 100)
    prune_magnitude(conv, 0.9)
    prune_magnitude(lin, 0.9)
    calls = []
    real = native.product()
    fresh_kernel.setattr(native, "product", lambda: lambda *a: calls.append(1) or real(*a))
    fresh_kernel.setenv("ZOO_SPARSE_PLAN", "sparse")  # whatever this machine's timings say
    for layer in (conv, lin):
        layer.reparameterize()
    x, rows = torch.randn(2, 128, 20, 20), torch.randn(3, 256)
    with torch.no_grad():
        assert rel_err(conv(x), F.conv2d(x, conv.weight, conv.bias)) <= 1e-5
        assert len(calls) == 2  # one product per sample
        assert (
            rel_err(conv(x.contiguous(memory_format=torch.channels_last)), F.conv2d(x, conv.weight, conv.bias)) <= 1e-5
        )
        assert rel_err(lin(rows), F.linear(rows, lin.weight, lin.bias)) <= 1e-5
    assert len(calls) == 2 + 2 + 1  # then the classifier's product over its three rows


def test_mkl_product_when_asked(fresh_kernel) -> None:
    fresh_kernel.setenv("ZOO_SPARSE_KERNEL", "mkl")
    assert native.kernel_name() == "mkl" and "ZOO_SPARSE_KERNEL=mkl" in native.kernel_status()
    conv = SparseConv2d(128, 96)
    prune_magnitude(conv, 0.9)
    conv.reparameterize()
    x = torch.randn(2, 128, 20, 20)
    with torch.no_grad():
        csr, bias, _ = conv._csr_weight()
        assert rel_err(conv._sparse_forward(x, csr, bias), F.conv2d(x, conv.weight, conv.bias)) <= 1e-5


def test_a_failed_build_falls_back_and_says_why(fresh_kernel, tmp_path) -> None:
    if native._compiler() is None:
        assert "no C compiler" in native.kernel_status() and native.kernel_name() == "mkl"
        return
    bad = tmp_path / "spmm.c"
    bad.write_text("this is not C\n")
    fresh_kernel.setenv("ZOO_CACHE", str(tmp_path / "cache"))
    fresh_kernel.setattr(native, "SOURCE", bad)
    assert native.kernel_name() == "mkl"
    assert "native kernel unavailable" in native.kernel_status() and "failed" in native.kernel_status()
    assert not list((tmp_path / "cache" / "kernels").glob("*")), "no half-written library is left behind"
    native.reset()
    fresh_kernel.setenv("ZOO_SPARSE_KERNEL", "native")
    with pytest.raises(RuntimeError, match="ZOO_SPARSE_KERNEL=native, but the native sparse kernel is unavailable"):
        native.kernel_name()
    native.reset()
    fresh_kernel.setenv("ZOO_SPARSE_KERNEL", "fast")
    with pytest.raises(ValueError, match="use auto, native or mkl"):
        native.kernel_name()


@needs_cc
def test_kernel_is_built_once_per_cache(fresh_kernel, tmp_path) -> None:
    fresh_kernel.setenv("ZOO_CACHE", str(tmp_path))
    assert native.spmm_available()
    built = list((tmp_path / "kernels").glob("spmm-*.so"))
    assert len(built) == 1
    stamp = built[0].stat().st_mtime_ns
    native.reset()
    assert native.spmm_available() and built[0].stat().st_mtime_ns == stamp  # found, not rebuilt


@needs_cc
def test_unwritable_cache_builds_in_the_temp_folder(fresh_kernel, tmp_path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a folder")
    fresh_kernel.setenv("ZOO_CACHE", str(blocked))  # <file>/kernels cannot be created
    fresh_kernel.setattr(native.tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    assert native.kernel_name() == "native", native.kernel_status()
    assert list((tmp_path / "tmp" / "efficient-zoo-kernels").glob("spmm-*.so"))


def _check_product(product, threads: int) -> None:
    for n in (1, 3, 4, 9, 16, 33, 64, 65, 127, 128, 129, 196, 300, 784):  # every strip / remainder / tail path
        w = _csr(37, 53, 0.15, empty_rows=2)
        csr = w.to_sparse_csr()
        parts = (csr.crow_indices().int(), csr.col_indices().int(), csr.values())
        x, bias = torch.randn(53, n), torch.randn(37)
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            out = native.native_spmm(*parts, 53, x, bias, product=product)
        finally:
            torch.set_num_threads(before)
        assert rel_err(out, (w.double() @ x.double() + bias.double()[:, None]).float()) <= 1e-6, n


@needs_cc
@on_x86
@pytest.mark.parametrize("march", list(ISA_OF))
def test_every_x86_build_is_exact_where_this_cpu_runs_it(march: str, tmp_path) -> None:
    lib = tmp_path / f"spmm-{march}.so"
    try:
        native.compile_kernel(lib, march)  # every build must compile, whatever this CPU runs
    except RuntimeError as e:
        if "bad value" in str(e) and march.startswith("x86-64-v"):
            pytest.skip(f"this compiler predates -march={march} (GCC 11 / clang 12)")
        raise
    assert lib.stat().st_size > 0
    if not native.cpu_supports(march):
        return  # built only: this CPU lacks the ISA (e.g. AVX-512 on an AVX2-only machine)
    product, config = native.load_library(lib)
    assert config.split()[0] == ISA_OF[march], config
    for threads in (1, 2):
        _check_product(product, threads)


@needs_cc
@on_x86
@pytest.mark.parametrize("defines", [{"ZOO_NV": 3, "ZOO_CH": 2}, {"ZOO_VW": 8, "ZOO_NV": 1, "ZOO_CH": 2}])
def test_other_strip_shapes_are_exact(defines: dict, tmp_path) -> None:
    lib = tmp_path / "spmm-shape.so"
    native.compile_kernel(lib, "x86-64", defines=defines)  # generic vectors: runs on any x86-64
    product, config = native.load_library(lib)
    assert f"nv={defines['ZOO_NV']} ch={defines['ZOO_CH']}" in config
    _check_product(product, 2)


@pytest.mark.skipif(shutil.which("aarch64-linux-gnu-gcc") is None, reason="no aarch64 cross compiler")
def test_neon_build_compiles_and_runs_under_qemu(tmp_path) -> None:
    cc = "aarch64-linux-gnu-gcc"
    native.compile_kernel(tmp_path / "spmm-neon.so", "armv8-a", cc=cc)
    if shutil.which("qemu-aarch64") is None:
        return  # built only
    exe = tmp_path / "selfcheck"
    cmd = [cc, "-O2", "-fopenmp", "-std=c99", "-ffp-contract=fast", "-static", str(SELFCHECK), str(native.SOURCE)]
    subprocess.run([*cmd, "-o", str(exe), "-lm"], check=True, capture_output=True, timeout=300)
    res = subprocess.run(["qemu-aarch64", str(exe)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and res.stdout.startswith("neon vw=4"), res.stdout + res.stderr


@needs_cc
def test_selfcheck_catches_a_wrong_kernel(tmp_path) -> None:
    """The C self-check (used for builds this process cannot load) fails on a kernel that is wrong."""
    broken = tmp_path / "spmm.c"
    broken.write_text(native.SOURCE.read_text().replace("a[v] += w0 * loadv(x0 + ZOO_VW * v);", "a[v] += w0;"))
    exe = tmp_path / "selfcheck"
    cc = native._compiler()
    subprocess.run([cc, "-O1", "-fopenmp", "-std=c99", str(SELFCHECK), str(broken), "-o", str(exe), "-lm"], check=True)
    assert subprocess.run([str(exe)], capture_output=True).returncode == 1


@needs_cc
@on_x86
def test_sparse_march_selects_the_build(fresh_kernel, tmp_path) -> None:
    fresh_kernel.setenv("ZOO_CACHE", str(tmp_path))
    fresh_kernel.setenv("ZOO_SPARSE_MARCH", "x86-64")  # SSE2: runs on every x86-64 CPU
    assert native.kernel_config() == "sse2 vw=4 nv=8 ch=1" and "-march=x86-64" in native.kernel_status()
    native.reset()
    fresh_kernel.setenv("ZOO_SPARSE_MARCH", "x86-64; rm -rf /")
    with pytest.raises(ValueError, match="is not a -march value"):
        native.kernel_name()
