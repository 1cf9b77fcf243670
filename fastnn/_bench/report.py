"""The benchmark's record: the machine and software it ran on, and the --json file."""
import json
import math
import os
import platform
import sys

from fastnn._bench.child import ARGV_VAR

__all__ = ["environment", "loadavg", "write_json"]


def _cpu_model():
    """The CPU's name, with its family and model numbers (x86: Zen 4 is family 25, Zen 5 26)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (cpu family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def loadavg():
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def environment(torch):
    """Everything needed to interpret the numbers later."""
    import numpy as np
    env = {"cpu": _cpu_model(), "platform": platform.platform(), "machine": platform.machine(),
           "python": sys.version.split()[0], "numpy": np.__version__,
           "loadavg_start": loadavg(),
           "argv": json.loads(os.environ[ARGV_VAR]) if ARGV_VAR in os.environ else sys.argv}
    try:
        import scipy
        env["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        from fastnn._config import config
        env["fastnn"] = config()
    except Exception as exc:  # a partial build must not stop the benchmark
        env["fastnn"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        from fastnn_ext import _conv
        env["fastnn"]["ukernel_level"] = getattr(_conv, "UKERNEL_LEVEL", None)
    except Exception:
        pass
    if torch is not None:
        env["torch"] = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
                        "mkldnn": bool(getattr(torch.backends, "mkldnn", None)
                                       and torch.backends.mkldnn.is_available())}
        try:
            env["torch"]["parallel_info"] = torch.__config__.parallel_info()
        except Exception:
            pass
    return env


def _clean(obj):
    """JSON-safe: non-finite floats to None, tuples to lists, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return _clean(obj.item())
        except Exception:
            return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1)
        f.write("\n")
