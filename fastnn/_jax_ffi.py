"""fastnn.jax's host calls through XLA's FFI: a Python handler behind a C function pointer.

``jax.pure_callback`` costs about 90 us per call on CPU, nearly all of it JAX's own
machinery (wrapping the arguments, ``device_put`` of the results). An FFI custom call
reaches Python through one ``ctypes`` callback instead: XLA calls the handler with its
call frame, the handler reads the argument buffers in place as read-only NumPy arrays,
calls the :class:`fastnn.jax._Host` (the same object ``pure_callback`` would call) and
copies each result into XLA's result buffer.

The argument views are valid during the call only (XLA owns the buffers); nothing in
fastnn keeps them, and every result is copied out before the handler returns.

One target, ``fastnn_host``, is registered for the CPU platform; the integer attribute
``fastnn_host`` of each call selects the host object from a process-wide registry. The
registry holds its hosts for the life of the process (a compiled executable refers to a
host by number only, so it cannot keep it alive itself); hosts are small and made once
per signature.

The declarations below follow ``xla/ffi/api/c_api.h`` (``jax.ffi.include_dir()``), only
as far as this handler needs: the call frame with its arguments, results and
attributes, buffers, scalar attributes, the extension chain with the metadata
extension, the API version and the function table of ``XLA_FFI_Api`` up to
``XLA_FFI_Error_Create``.
"""
import ctypes
import itertools
import threading
import traceback

import numpy as np

# ------------------------------------------------------------------ C API declarations
_size_t = ctypes.c_size_t
_int64 = ctypes.c_int64
_enum = ctypes.c_int                    # C enums are ints on every platform XLA supports
_void_p = ctypes.c_void_p


class _ExtensionBase(ctypes.Structure):
    pass


_ExtensionBase._fields_ = [
    ("struct_size", _size_t),
    ("type", _enum),                               # XLA_FFI_Extension_Type
    ("next", ctypes.POINTER(_ExtensionBase)),
]


class _ApiVersion(ctypes.Structure):
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("major_version", ctypes.c_int),
        ("minor_version", ctypes.c_int),
    ]


class _Api(ctypes.Structure):
    """The head of ``XLA_FFI_Api``: its version and the first entry of its function table."""
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("api_version", _ApiVersion),
        ("internal_api", _void_p),
        ("error_create", _void_p),                 # XLA_FFI_Error_Create*
    ]


class _ErrorCreateArgs(ctypes.Structure):
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("message", ctypes.c_char_p),
        ("errc", _enum),                           # XLA_FFI_Error_Code
    ]


class _Buffer(ctypes.Structure):
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("dtype", _enum),                          # XLA_FFI_DataType
        ("data", _void_p),
        ("rank", _int64),
        ("dims", ctypes.POINTER(_int64)),
    ]


class _Args(ctypes.Structure):                  # XLA_FFI_Args and XLA_FFI_Rets
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("size", _int64),
        ("types", ctypes.POINTER(_enum)),          # XLA_FFI_ArgType / XLA_FFI_RetType
        ("args", ctypes.POINTER(_void_p)),
    ]


class _ByteSpan(ctypes.Structure):
    _fields_ = [("ptr", _void_p), ("len", _size_t)]


class _Attrs(ctypes.Structure):
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("size", _int64),
        ("types", ctypes.POINTER(_enum)),          # XLA_FFI_AttrType
        ("names", ctypes.POINTER(ctypes.POINTER(_ByteSpan))),
        ("attrs", ctypes.POINTER(_void_p)),
    ]


class _Scalar(ctypes.Structure):
    _fields_ = [("dtype", _enum), ("value", _void_p)]


class _CallFrame(ctypes.Structure):
    _fields_ = [
        ("struct_size", _size_t),
        ("extension_start", ctypes.POINTER(_ExtensionBase)),
        ("api", ctypes.POINTER(_Api)),
        ("ctx", _void_p),
        ("stage", _enum),                          # XLA_FFI_ExecutionStage
        ("args", _Args),
        ("rets", _Args),
        ("attrs", _Attrs),
        ("future", _void_p),
    ]


class _Metadata(ctypes.Structure):
    _fields_ = [
        ("struct_size", _size_t),
        ("api_version", _ApiVersion),
        ("traits", ctypes.c_uint32),               # XLA_FFI_Handler_Traits
        ("state_type_id", _int64),                 # XLA_FFI_TypeId
    ]


class _MetadataExtension(ctypes.Structure):
    _fields_ = [("extension_base", _ExtensionBase), ("metadata", ctypes.POINTER(_Metadata))]


def _struct_size(struct, last_field):
    """``XLA_FFI_STRUCT_SIZE``: the offset of the last field plus its size."""
    field = getattr(struct, last_field)
    return field.offset + field.size


_API_VERSION_SIZE = _struct_size(_ApiVersion, "minor_version")
_ERROR_CREATE_ARGS_SIZE = _struct_size(_ErrorCreateArgs, "errc")
_API_HEAD_SIZE = _struct_size(_Api, "error_create")
_CALL_FRAME_SIZE = _struct_size(_CallFrame, "attrs")
_METADATA_SIZE = _struct_size(_Metadata, "traits")

_EXTENSION_METADATA = 1                 # XLA_FFI_Extension_Metadata
_STAGE_EXECUTE = 3                      # XLA_FFI_ExecutionStage_EXECUTE
_BUFFER = 1                             # XLA_FFI_ArgType_BUFFER / XLA_FFI_RetType_BUFFER
_ATTR_SCALAR = 3                        # XLA_FFI_AttrType_SCALAR
_S64 = 5                                # XLA_FFI_DataType_S64
_ERROR_INVALID_ARGUMENT = 3
_ERROR_UNIMPLEMENTED = 12
_ERROR_INTERNAL = 13

_DTYPES = {                             # XLA_FFI_DataType -> NumPy
    1: np.dtype(np.bool_),              # PRED
    2: np.dtype(np.int8), 3: np.dtype(np.int16), 4: np.dtype(np.int32), 5: np.dtype(np.int64),
    6: np.dtype(np.uint8), 7: np.dtype(np.uint16), 8: np.dtype(np.uint32),
    9: np.dtype(np.uint64),
    10: np.dtype(np.float16), 11: np.dtype(np.float32), 12: np.dtype(np.float64),
}
_TYPESTR = {code: dt.str for code, dt in _DTYPES.items()}

_HANDLER_TYPE = ctypes.CFUNCTYPE(_void_p, _void_p)          # XLA_FFI_Handler
_ERROR_CREATE_TYPE = ctypes.CFUNCTYPE(_void_p, ctypes.POINTER(_ErrorCreateArgs))
_CAPSULE_NEW = ctypes.PYFUNCTYPE(ctypes.py_object, _void_p, ctypes.c_char_p, _void_p)(
    ("PyCapsule_New", ctypes.pythonapi))

TARGET = "fastnn_host"
ATTRIBUTE = "fastnn_host"


# ------------------------------------------------------------------ host registry
_HOSTS: dict = {}                       # key -> host (for the process: see the module notes)
_KEYS = itertools.count(1)
_LOCK = threading.Lock()


def key_of(host):
    """The registry key of ``host`` (registered on first use)."""
    key = getattr(host, "_ffi_key", None)
    if key is None:
        with _LOCK:
            key = getattr(host, "_ffi_key", None)
            if key is None:
                key = next(_KEYS)
                _HOSTS[key] = host
                host._ffi_key = key
    return key


# ------------------------------------------------------------------ the handler
class _View:
    """An ``__array_interface__`` over an XLA buffer (``np.asarray`` makes it an array
    without copying)."""
    __slots__ = ("__array_interface__",)

    def __init__(self, interface):
        self.__array_interface__ = interface


def _array(address, readonly):
    """A NumPy array over the XLA_FFI_Buffer at ``address`` (read-only for arguments)."""
    buf = _Buffer.from_address(address)
    code, rank, data = buf.dtype, buf.rank, buf.data
    typestr = _TYPESTR.get(code)
    if typestr is None:
        raise TypeError(f"fastnn.jax: unsupported XLA buffer dtype code {code}")
    shape = tuple(buf.dims[:rank]) if rank else ()
    if not data or 0 in shape:
        if 0 not in shape:
            raise RuntimeError(f"fastnn.jax: XLA passed no data for a buffer of shape {shape}")
        out = np.empty(shape, _DTYPES[code])        # zero-size: nothing to read or write
        out.flags.writeable = not readonly
        return out
    return np.asarray(_View({"data": (data, readonly), "shape": shape, "typestr": typestr,
                             "version": 3}))


def _host_key(attrs):
    if attrs.size != 1 or attrs.types[0] != _ATTR_SCALAR:
        raise RuntimeError(f"fastnn.jax: the {TARGET} target takes one scalar attribute "
                           f"{ATTRIBUTE!r}, got {attrs.size} attributes")
    scalar = _Scalar.from_address(attrs.attrs[0])
    if scalar.dtype != _S64:
        raise RuntimeError(f"fastnn.jax: attribute {ATTRIBUTE!r} must be int64, got dtype "
                           f"code {scalar.dtype}")
    return _int64.from_address(scalar.value).value


def _buffers(table):
    """The addresses of the buffers of an XLA_FFI_Args / XLA_FFI_Rets."""
    n = table.size
    if n and table.types[:n].count(_BUFFER) != n:
        raise TypeError("fastnn.jax: every argument and result must be a buffer")
    return table.args[:n] if n else ()


def _execute(frame):
    host = _HOSTS.get(_host_key(frame.attrs))
    if host is None:
        raise RuntimeError("fastnn.jax: the call names no registered host (an executable "
                           "from another process?)")
    outs = _buffers(frame.rets)
    results = host(*[_array(a, True) for a in _buffers(frame.args)])
    if len(results) != len(outs):
        raise RuntimeError(f"fastnn.jax: {len(results)} results for {len(outs)} result "
                           f"buffers")
    for address, res in zip(outs, results):
        out = _array(address, False)
        if type(res) is not np.ndarray:
            res = np.asarray(res)
        if res.shape != out.shape or res.dtype != out.dtype:
            raise RuntimeError(f"fastnn.jax: a result of shape {res.shape} and dtype "
                               f"{res.dtype} for a buffer of shape {out.shape} and dtype "
                               f"{out.dtype}")
        if out.size:
            np.copyto(out, res)


def _metadata(frame):
    """The metadata extension in the call frame's chain, or None."""
    ext = frame.extension_start
    while ext:
        if ext.contents.type == _EXTENSION_METADATA:
            return ctypes.cast(ext, ctypes.POINTER(_MetadataExtension)).contents.metadata
        ext = ext.contents.next
    return None


def _answer_metadata(frame, metadata):
    """XLA's metadata query: the API version this handler speaks (the running XLA's),
    no traits."""
    if not metadata or not frame.api:
        return
    meta = metadata.contents
    if meta.struct_size and meta.struct_size < _METADATA_SIZE:
        raise RuntimeError(f"fastnn.jax: XLA_FFI_Metadata of {meta.struct_size} bytes, "
                           f"expected at least {_METADATA_SIZE}")
    version = frame.api.contents.api_version
    meta.api_version.struct_size = _API_VERSION_SIZE
    meta.api_version.extension_start = None
    meta.api_version.major_version = version.major_version
    meta.api_version.minor_version = version.minor_version
    meta.traits = 0


def _error(address, exc):
    """An XLA_FFI_Error carrying ``exc`` (its type, message and traceback), made with the
    API's own error constructor."""
    frame = _CallFrame.from_address(address)
    api = frame.api.contents if frame.api else None
    if api is None or api.struct_size < _API_HEAD_SIZE or not api.error_create:
        # No way to report it to XLA: at least say so (XLA will see a success).
        traceback.print_exception(type(exc), exc, exc.__traceback__)
        return None
    if isinstance(exc, (ValueError, TypeError, IndexError)):
        code = _ERROR_INVALID_ARGUMENT
    elif isinstance(exc, NotImplementedError):
        code = _ERROR_UNIMPLEMENTED
    else:
        code = _ERROR_INTERNAL
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    message = (f"{type(exc).__name__}: {exc}\n\nfastnn.jax host call traceback:\n{text}")
    args = _ErrorCreateArgs(_ERROR_CREATE_ARGS_SIZE, None,
                            message.encode("utf-8", "backslashreplace"), code)
    return _ERROR_CREATE_TYPE(api.error_create)(ctypes.byref(args))


def _handle(address):
    """``XLA_FFI_Error* handler(XLA_FFI_CallFrame*)``: NULL on success."""
    try:
        frame = _CallFrame.from_address(address)
        if frame.struct_size < _CALL_FRAME_SIZE:
            raise RuntimeError(f"fastnn.jax: XLA_FFI_CallFrame of {frame.struct_size} bytes, "
                               f"expected at least {_CALL_FRAME_SIZE}")
        if frame.extension_start:
            metadata = _metadata(frame)
            if metadata is not None:
                _answer_metadata(frame, metadata)
                return None
        if frame.stage != _STAGE_EXECUTE:
            return None
        _execute(frame)
        return None
    except BaseException as exc:       # never let an exception cross into XLA
        try:
            return _error(address, exc)
        except BaseException:          # pragma: no cover - nothing left to report with
            traceback.print_exc()
            return None


# ------------------------------------------------------------------ registration
_KEEP: list = []                        # the handler's ctypes objects, alive for the process
_STATE = {"ok": None}


def available():
    """Whether the FFI path can be used: ``jax.ffi`` has what it needs and the target is
    registered (tried once; a failure leaves the ``pure_callback`` path)."""
    ok = _STATE["ok"]
    if ok is None:
        with _LOCK:
            ok = _STATE["ok"]
            if ok is None:
                ok = _STATE["ok"] = _register()
    return ok


def _register():
    try:
        import jax
        ffi = getattr(jax, "ffi", None)
        if ffi is None or not hasattr(ffi, "ffi_call") or not hasattr(ffi,
                                                                      "register_ffi_target"):
            return False
        handler = _HANDLER_TYPE(_handle)
        capsule = _CAPSULE_NEW(ctypes.cast(handler, _void_p).value, None, None)
        _KEEP.extend((handler, capsule))
        ffi.register_ffi_target(TARGET, capsule, platform="cpu")
    except Exception:
        return False
    return True


def call(host, args):
    """``host(*args)`` as an XLA FFI custom call (the stand-in for ``jax.pure_callback``)."""
    import jax
    fn = jax.ffi.ffi_call(TARGET, host.out_specs, vmap_method=host.vmap_method)
    return fn(*args, **{ATTRIBUTE: np.int64(key_of(host))})
