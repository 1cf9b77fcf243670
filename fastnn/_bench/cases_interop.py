"""Benchmark family "interop": fastnn and PyTorch kernels sharing the process with
NumPy, SciPy and PyTorch, at the default environment.

Unlike the other families this one runs in the benchmark's own process, never in
the isolation child (ISOLATION_ENV would shorten the very spin times it measures).
For one representative case of every family it times, in one run:

alone
    the kernel back to back (median of repeated calls).
1 thread
    the same with ``fastnn.threads(1)``: the SPEC's floor ("never slower than fastnn
    alone on one thread").
after numpy / after scipy / after torch
    the kernel right after an untimed 384x384 float32 matmul of NumPy
    (``a @ a``), of SciPy's BLAS (``scipy.linalg.blas.sgemm``) and of PyTorch
    (``torch.mm``): their thread pools are still spinning when the kernel starts.
1t: after numpy / scipy / torch
    the same on one thread (``fastnn.threads(1)``): the floor under the same
    conditions. The preceding call also leaves caches and TLB colder (a 1 ms pure-Python
    loop before ``relu_backward`` of 2^20 floats makes it 2.5x slower on one thread), so
    "after X" against this column is the thread pools' share of the penalty.
numpy after / torch after
    a timed NumPy / PyTorch matmul right after an untimed kernel call, against that
    matmul alone: do the kernel's idle threads hold the cores?
numpy after idle / torch after idle
    the control: the same matmul after ``time.sleep`` as long as the kernel takes
    (the other library's idle workers fall asleep and the caches cool either way).

PyTorch's own kernel for the same operation gets the same rows. The ``coexist``
rows repeat the NumPy and SciPy directions with :func:`fastnn.set_coexistence` on,
against an ``alone`` measured under that setting.
Penalties are times divided by ``alone``. Columns that are compared with each other
(alone and 1 thread; after X and 1t: after X; a matmul alone, after the kernel and
after the idle spell; the coexist rows) are measured in turns within each repetition,
not one block after the other.
"""
import contextlib
import time

import numpy as np

FAMILY = "interop"
DESCRIPTION = ("in-process, default environment: kernels right after NumPy/SciPy/PyTorch "
               "calls and the reverse")
IN_PROCESS = True

MATMUL_N = 384


class InteropCase:
    """A representative kernel: a fastnn callable and PyTorch's, on the same inputs."""

    def __init__(self, name, make):
        self.name = name
        self.family = FAMILY
        self.id = name
        self._make = make

    def build(self, torch):
        return self._make(np.random.default_rng(0), torch)


def _conv(N, C, H, W, K, k):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = rng.standard_normal((K, C, k, k), dtype=np.float32) * 0.1
        fns = {"fastnn": lambda: fastnn.conv2d(x, w, padding=k // 2)}
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            fns["torch"] = lambda: torch.nn.functional.conv2d(tx, tw, padding=k // 2)
        return fns
    return make


def _conv1d(N, C, L, K, k):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((N, C, L), dtype=np.float32)
        w = rng.standard_normal((K, C, k), dtype=np.float32) * 0.1
        fns = {"fastnn": lambda: fastnn.conv1d(x, w, padding=k // 2)}
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            fns["torch"] = lambda: torch.nn.functional.conv1d(tx, tw, padding=k // 2)
        return fns
    return make


def _conv_transpose(N, C, H, W, K, k, s):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        w = rng.standard_normal((C, K, k, k), dtype=np.float32) * 0.1
        fns = {"fastnn": lambda: fastnn.conv_transpose2d(x, w, stride=s, padding=1)}
        if torch is not None:
            tx, tw = torch.from_numpy(x), torch.from_numpy(w)
            fns["torch"] = lambda: torch.nn.functional.conv_transpose2d(tx, tw, stride=s, padding=1)
        return fns
    return make


def _lstm_cell(B, I, H):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((B, I), dtype=np.float32)
        h = rng.standard_normal((B, H), dtype=np.float32)
        c = rng.standard_normal((B, H), dtype=np.float32)
        kernel = rng.standard_normal((I + H, 4 * H), dtype=np.float32) * 0.05
        bias = rng.standard_normal(4 * H, dtype=np.float32) * 0.05
        fns = {"fastnn": lambda: fastnn.lstm_cell(x, h, c, kernel, bias)}
        if torch is not None:
            from fastnn.convert import lstm_to_torch
            wih, whh, bih, bhh = (torch.from_numpy(np.ascontiguousarray(a))
                                  for a in lstm_to_torch(kernel, bias))
            tx, th, tc = torch.from_numpy(x), torch.from_numpy(h), torch.from_numpy(c)

            def torch_cell():
                with torch.no_grad():
                    return torch._VF.lstm_cell(tx, (th, tc), wih, whh, bih, bhh)
            fns["torch"] = torch_cell
        return fns
    return make


def _lstm(B, T, I, H):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((B, T, I), dtype=np.float32)
        h0 = np.zeros((B, H), np.float32)
        kernel = rng.standard_normal((I + H, 4 * H), dtype=np.float32) * 0.05
        bias = rng.standard_normal(4 * H, dtype=np.float32) * 0.05
        fns = {"fastnn": lambda: fastnn.lstm(x, h0, h0, kernel, bias)}
        if torch is not None:
            mod = torch.nn.LSTM(I, H, batch_first=True)
            tx = torch.from_numpy(x)

            def torch_lstm():
                with torch.no_grad():
                    return mod(tx)
            fns["torch"] = torch_lstm
        return fns
    return make


def _relu_backward(n):
    def make(rng, torch):
        import fastnn
        gy = rng.standard_normal(n, dtype=np.float32)
        x = rng.standard_normal(n, dtype=np.float32)
        out = np.empty_like(gy)
        fns = {"fastnn": lambda: fastnn.relu_backward(gy, x, out=out)}
        if torch is not None:
            tg, tx = torch.from_numpy(gy), torch.from_numpy(x)
            fns["torch"] = lambda: torch.ops.aten.threshold_backward(tg, tx, 0.0)
        return fns
    return make


def _max_pool(N, C, H, W, k):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((N, C, H, W), dtype=np.float32)
        fns = {"fastnn": lambda: fastnn.max_pool2d(x, k)}
        if torch is not None:
            tx = torch.from_numpy(x)
            fns["torch"] = lambda: torch.nn.functional.max_pool2d(tx, k)
        return fns
    return make


def _banded(B, n, lo, up):
    def make(rng, torch):
        import fastnn
        x = rng.standard_normal((B, n), dtype=np.float32)
        w = rng.standard_normal((n, n), dtype=np.float32) * 0.1
        return {"fastnn": lambda: fastnn.banded_matmul(x, w, lo, up)}
    return make


CASES = [
    InteropCase("conv2d N8 C64 56x56 K64 k3", _conv(8, 64, 56, 56, 64, 3)),
    InteropCase("conv2d N64 C16 32x32 K32 k3", _conv(64, 16, 32, 32, 32, 3)),
    InteropCase("conv1d N16 C64 L1024 K64 k5", _conv1d(16, 64, 1024, 64, 5)),
    InteropCase("conv_transpose2d N8 C64 28x28 K32 k4 s2", _conv_transpose(8, 64, 28, 28, 32, 4, 2)),
    InteropCase("lstm_cell B16 I128 H256", _lstm_cell(16, 128, 256)),
    InteropCase("lstm B32 T50 I128 H256", _lstm(32, 50, 128, 256)),
    InteropCase("relu_backward 2^20 out=", _relu_backward(1 << 20)),
    InteropCase("max_pool2d N32 C64 56x56 k2", _max_pool(32, 64, 56, 56, 2)),
    InteropCase("banded_matmul B64 n4096 band(8,8)", _banded(64, 4096, 8, 8)),
]


def cases():
    return list(CASES)


# ------------------------------------------------------------------ measurement
def _median_after(fn, before, reps, gap_s):
    """Median seconds of fn() right after an untimed before() (or back to back)."""
    return _medians_interleaved({None: (fn, before, None)}, reps, gap_s)[None]


def _medians_interleaved(variants, reps, gap_s=0):
    """Median seconds of each variant ``{key: (fn, before, context)}``, the variants
    taking turns within every repetition (the order reversed every other one).

    Conditions that are compared with each other (a kernel after a NumPy call on its
    default team, and on one thread) are measured in turns rather than one after the
    other, so that the machine's drift over a second (other tenants, clock changes)
    hits both alike; on this 2-core VM such drift moved one column by 1.8x between two
    consecutive blocks while the interleaved pair agreed within 3%."""
    keys = list(variants)
    times = {k: [] for k in keys}
    for r in range(reps):
        for k in (keys if r % 2 == 0 else keys[::-1]):
            fn, before, context = variants[k]
            with (context() if context is not None else contextlib.nullcontext()):
                if before is not None:
                    before()
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
            if gap_s:
                time.sleep(gap_s)
    return {k: float(np.median(v)) for k, v in times.items()}


def _reps_for(fn, quick):
    fn()
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    budget = 0.15 if quick else 0.6
    return int(min(60, max(5 if quick else 11, budget / max(dt, 1e-6))))


def measure(case, torch, quick=False):
    """The rows of one case: {subject: {condition: seconds}}."""
    import scipy.linalg.blas as sblas
    import fastnn
    rng = np.random.default_rng(1)
    a = rng.standard_normal((MATMUL_N, MATMUL_N), dtype=np.float32)
    af = np.asfortranarray(a)
    np_mm = lambda: a @ a  # noqa: E731
    sp_mm = lambda: sblas.sgemm(1.0, af, af)  # noqa: E731
    others = {"numpy": np_mm, "scipy": sp_mm}
    if torch is not None:
        ta = torch.from_numpy(a)
        others["torch"] = lambda: torch.mm(ta, ta)
    fns = case.build(torch)
    out = {}
    for subject, fn in fns.items():
        reps = _reps_for(fn, quick)
        one = (lambda: fastnn.threads(1)) if subject == "fastnn" else None
        if one is None:
            row = {"alone": _median_after(fn, None, reps, 0)}
        else:
            row = _medians_interleaved({"alone": (fn, None, None),
                                        "1 thread": (fn, None, one)}, reps)
        for name, other in others.items():
            other()
            variants = {f"after {name}": (fn, other, None)}
            if one is not None:
                # The SPEC's floor under the same conditions: the preceding call also
                # leaves the caches and TLB colder, which costs a short kernel on one
                # thread as much as on two.
                variants[f"1 thread after {name}"] = (fn, other, one)
            row.update(_medians_interleaved(variants, reps))
        for name in ("numpy", "torch"):
            if name not in others:
                continue
            other = others[name]
            n_other = _reps_for(other, quick)
            variants = {f"{name} alone": (other, None, None),
                        f"{name} after": (other, fn, None)}
            if subject == "fastnn":
                # The control: the same matmul after the cores sat idle as long as the
                # kernel ran (its own pool's workers have gone to sleep meanwhile, and
                # the caches cooled): the part of "after" that is not fastnn's doing.
                idle = row["alone"]
                variants[f"{name} after idle"] = (other, lambda: time.sleep(idle), None)
            row.update(_medians_interleaved(variants, n_other))
        if subject == "fastnn" and hasattr(fastnn, "set_coexistence"):
            routed = fastnn.set_coexistence(True)
            try:
                if routed:
                    row.update(_medians_interleaved(
                        {"coexist: alone": (fn, None, None),
                         **{f"coexist: after {name}": (fn, others[name], None)
                            for name in ("numpy", "scipy")}}, reps))
                    n_other = _reps_for(np_mm, quick)
                    row.update(_medians_interleaved(
                        {"coexist: numpy alone": (np_mm, None, None),
                         "coexist: numpy after": (np_mm, fn, None)}, n_other))
            finally:
                fastnn.set_coexistence(False)
        out[subject] = row
    return out


COLUMNS = [
    ("alone", "alone ms", None),
    ("1 thread", "1 thr", "alone"),
    ("after numpy", "aft np", "alone"),
    ("after scipy", "aft sp", "alone"),
    ("after torch", "aft pt", "alone"),
    ("1 thread after numpy", "1t: aft np", "alone"),
    ("1 thread after scipy", "1t: aft sp", "alone"),
    ("1 thread after torch", "1t: aft pt", "alone"),
    ("numpy after", "np aft", "numpy alone"),
    ("numpy after idle", "np idle", "numpy alone"),
    ("torch after", "pt aft", "torch alone"),
    ("torch after idle", "pt idle", "torch alone"),
    ("coexist: after numpy", "co: aft np", "coexist: alone"),
    ("coexist: after scipy", "co: aft sp", "coexist: alone"),
    ("coexist: numpy after", "co: np aft", "coexist: numpy alone"),
]


def format_rows(name, rows):
    """Table lines for one case: times as penalties (x its reference) except alone."""
    lines = []
    for subject, row in rows.items():
        cells = []
        for key, _, ref in COLUMNS:
            v = row.get(key)
            if v is None:
                cells.append("-")
            elif ref is None:
                cells.append(f"{v * 1e3:.3f}")
            else:
                cells.append(f"{v / row[ref]:.2f}x")
        lines.append(f"{name[:42]:<42} {subject:<7} " + " ".join(f"{c:>10}" for c in cells))
    return lines


def header():
    return f"{'case':<42} {'kernel':<7} " + " ".join(f"{h:>10}" for _, h, _ in COLUMNS)


def run(out, quick=False, torch=None, only_cases=None):
    """Measure every case and print the table; returns {case name: rows}."""
    results = {}
    print(header(), file=out, flush=True)
    for case in CASES:
        if only_cases and not any(t in case.name for t in only_cases):
            continue
        rows = measure(case, torch, quick)
        results[case.name] = rows
        for line in format_rows(case.name, rows):
            print(line, file=out, flush=True)
    print("times: alone in ms; the others as x of alone (numpy/torch after: x of that "
          "matmul alone; 'idle': after sleeping as long as the kernel runs, the control). "
          "'1t:' = with fastnn.threads(1), the floor; 'co:' = with "
          "fastnn.set_coexistence(True).", file=out)
    return results
