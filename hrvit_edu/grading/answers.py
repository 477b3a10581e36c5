"""Running a reader's answer under a question's rules, and handing back only data.

The checks (``checks/<chapter>.py``) never touch the reader's function directly: they get an
:class:`Answer`, which offers three operations

* ``answer(*args)``                    call the question's function,
* ``answer.with_grad(args, wrt, up)``  call it and differentiate ``<out, up>`` w.r.t. ``args[wrt]``,
* ``answer.launch(grid, *args, **kw)`` launch the question's ``@triton.jit`` kernel *ourselves*,

and ``answer.require_launched()`` after a call: the launcher must have launched that kernel.

Each operation runs through :func:`execute`, the same code whether the answer lives in this
process (:class:`LocalAnswer`, used by ``check("q")`` in a notebook) or in the grading sandbox's
child process (``sandbox.RemoteAnswer``).  While the reader's code runs:

* ``Question.forbidden`` torch functions raise (a ``TorchFunctionMode`` sees every call, however
  it is spelled) and are recorded, so catching the error does not help;
* ``Question.off_limits`` package functions have their code swapped for one that raises
  "write this yourself", which catches every reference to them (``from ... import f`` included);
* warnings are recorded, and ``SystemExit``/``KeyboardInterrupt`` become an error of the call.

What comes back is a :class:`Reply` made of plain data (tensors, numbers, strings, containers):
:func:`to_wire` reduces any other object to its type name, and the sandbox's parent reads the
child's bytes with ``torch.load(weights_only=True)``, which cannot run code.
"""
from __future__ import annotations

import ast
import contextlib
import dataclasses
import importlib
import inspect
import textwrap
import types
import warnings
from typing import Any

import numpy as np
import torch
from torch.overrides import TorchFunctionMode

from ..bench.core import LiveTensorBytes
from .core import AnswerRaised, AnswerUnusable, CheckFailed, CheckTimeout, Question, clean_message, time_limit

OPAQUE = "\x00opaque"          # dict key marking an object that is not plain data


class OffLimits(Exception):
    """Raised inside the reader's code when it reaches something the question rules out."""


# ------------------------------------------------------------------------------ wire format
def to_wire(value: Any, _depth: int = 0) -> Any:
    """Plain data only: tensors (detached copies), numbers, strings, None, containers."""
    if _depth > 20:
        return {OPAQUE: "nested too deeply"}
    if isinstance(value, torch.Tensor):
        if type(value) is not torch.Tensor and not isinstance(value, torch.nn.Parameter):
            return {OPAQUE: type(value).__name__}
        return value.detach().clone()
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str, torch.dtype)):
        return value
    if isinstance(value, torch.Size):
        return tuple(value)
    if isinstance(value, (list, tuple)) and type(value) in (list, tuple):
        return type(value)(to_wire(v, _depth + 1) for v in value)
    if isinstance(value, dict) and type(value) is dict:
        return {_key(k): to_wire(v, _depth + 1) for k, v in value.items()}
    return {OPAQUE: type(value).__name__}


def _key(k: Any):
    """Dict keys as plain data: a 0-d tensor or numpy scalar becomes its Python number."""
    if isinstance(k, torch.Tensor) and k.numel() == 1:
        return k.item()
    if isinstance(k, np.generic):
        return k.item()
    return k if isinstance(k, (int, float, str, bool)) or k is None else str(k)


def from_wire(value: Any) -> Any:
    """Undo :func:`to_wire`'s markers: an opaque object becomes a stand-in of the same type name."""
    if isinstance(value, dict):
        if set(value) == {OPAQUE}:
            name = str(value[OPAQUE])
            return type(name if name.isidentifier() else "object", (), {"__repr__": lambda self: f"<{name}>"})()
        return {k: from_wire(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(from_wire(v) for v in value)
    return value


@dataclasses.dataclass
class Reply:
    """What one operation on an answer produced: a value or an error, plus what was observed."""
    value: Any = None
    error: dict | None = None        # {"kind": not_attempted|raised|rule, "type": str, "message": str}
    warnings: list = dataclasses.field(default_factory=list)    # [(category name, message)]
    launches: int = 0                # launches of the question's kernel during a call
    kernel_problem: str | None = None
    from_kernel: bool = False        # the returned tensor is a buffer the kernel was given
    peak_bytes: int = 0              # peak bytes of tensors the call created (Question.measure_memory)

    def as_wire(self) -> dict:
        return {"value": to_wire(self.value), "error": self.error, "warnings": list(self.warnings),
                "launches": int(self.launches), "kernel_problem": self.kernel_problem,
                "from_kernel": bool(self.from_kernel), "peak_bytes": int(self.peak_bytes)}

    @classmethod
    def from_wire(cls, d: Any) -> "Reply":
        if not isinstance(d, dict) or set(d) != {"value", "error", "warnings", "launches", "kernel_problem",
                                                 "from_kernel", "peak_bytes"}:
            return cls(error={"kind": "raised", "type": "GraderError",
                              "message": "the answer's process sent something that is not a reply"})
        err = d["error"]
        if err is not None and not (isinstance(err, dict) and all(isinstance(err.get(k), str)
                                                                for k in ("kind", "type", "message"))):
            err = {"kind": "raised", "type": "GraderError", "message": "malformed error"}
        warns = [(str(c), str(m)) for c, m in d["warnings"][:10]] if isinstance(d["warnings"], list) else []
        launches = d["launches"] if isinstance(d["launches"], int) else 0
        problem = d["kernel_problem"] if isinstance(d["kernel_problem"], str) else None
        peak = d["peak_bytes"] if isinstance(d["peak_bytes"], int) else 0
        return cls(from_wire(d["value"]), err, warns, launches, problem, d["from_kernel"] is True, peak)

    def unwrap(self) -> Any:
        """Re-emit the answer's warnings here and raise its error as the checks expect it."""
        for category, message in self.warnings:
            warnings.warn(message, _warning_category(category), stacklevel=2)
        if self.error is None:
            return self.value
        kind, name, message = self.error["kind"], self.error["type"], self.error["message"]
        if kind == "not_attempted":
            raise NotImplementedError(message)
        if kind == "rule":
            raise (AnswerUnusable if name in ("Missing", "NotAFunction") else CheckFailed)(message)
        raise AnswerRaised(name, message)


def _warning_category(name: str) -> type[Warning]:
    import builtins

    cat = getattr(builtins, name, None)
    if isinstance(cat, type) and issubclass(cat, Warning):
        return cat
    return type(name if name.isidentifier() else "Warning", (UserWarning,), {})


# ------------------------------------------------------------------------------ the rules
def _resolve(dotted: str) -> Any:
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(dotted)


def _func_key(func: Any) -> Any:
    """Identity of a torch function or op as TorchFunctionMode sees it."""
    schema = getattr(func, "_schema", None)             # OpOverload: hrvit_edu::des
    if schema is not None:
        return ("op", schema.name)
    qual = getattr(func, "_qualified_op_name", None)    # OpOverloadPacket
    if qual is not None:
        return ("op", qual)
    return ("fn", id(func))


def forbidden_keys(names: tuple[str, ...]) -> dict:
    """What the mode refuses: each named torch function, and its aten op (``torch.ops.aten.kron``
    is ``torch.kron`` by another name)."""
    keys = {}
    for name in names:
        if name.startswith("torch.") and not name.startswith("torch.ops."):
            keys[("op", f"aten::{name.rsplit('.', 1)[1]}")] = name
        try:
            keys[_func_key(_resolve(name))] = name
        except (ImportError, AttributeError):
            continue                     # an op whose module is not loaded cannot be called either
    return keys


class _Forbid(TorchFunctionMode):
    def __init__(self, keys: dict):
        super().__init__()
        self.keys, self.hits = keys, []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = self.keys.get(_func_key(func))
        if name is not None:
            self.hits.append(name)
            raise OffLimits(f"this question forbids `{name}`")
        return func(*args, **(kwargs or {}))


_OFF_LIMITS_HITS: list[str] = []


def _off_limits_message(name: str) -> str:
    if name.startswith("hrvit_edu."):
        return f"`{name}` is part of the package you are re-implementing: write this yourself"
    return f"this question forbids `{name}`"


def _off_limits_hit(name: str) -> OffLimits:        # called by the swapped-in code
    _OFF_LIMITS_HITS.append(name)
    return OffLimits(_off_limits_message(name))


def _stub_code(name: str, n_free: int) -> types.CodeType:
    """Code that raises "write this yourself", with ``n_free`` free variables so that it can
    replace the code of a closure (a decorated function, a method using ``super()``)."""
    free = [f"_free{i}" for i in range(n_free)]
    src = ("def _outer():\n"
           + "".join(f"    {v} = None\n" for v in free)
           + "    def _off_limits(*args, **kwargs):\n"
           + "".join(f"        {v}\n" for v in free)
           + f"        raise __import__('hrvit_edu.grading.answers', fromlist=['_'])._off_limits_hit({name!r})\n"
           + "    return _off_limits\n")
    ns: dict = {}
    exec(compile(src, "<off-limits>", "exec"), ns)
    return ns["_outer"]().__code__


def _stub_function(name: str):
    fn = types.FunctionType(_stub_code(name, 0), {"__builtins__": __builtins__}, name.rsplit(".", 1)[-1])
    fn.__off_limits__ = name
    return fn


def off_limits_attributes(names: tuple[str, ...]) -> list[tuple[str, Any, str]]:
    """Off-limits callables that are not Python functions (``numpy.kron``): (name, owner, attribute),
    replaced on their module rather than by swapping code."""
    out = []
    for name in names:
        obj = _resolve(name)
        if not isinstance(obj, (types.ModuleType, type, types.FunctionType)) and callable(obj):
            owner = _resolve(name.rsplit(".", 1)[0])
            out.append((name, owner, name.rsplit(".", 1)[1]))
    return out


def off_limits_functions(names: tuple[str, ...]) -> list[tuple[str, types.FunctionType]]:
    """Expand names (functions, classes, modules) into the plain functions to swap."""
    out = []
    for name in names:
        obj = _resolve(name)
        if not isinstance(obj, (types.ModuleType, type, types.FunctionType)) and callable(obj):
            continue                                      # see off_limits_attributes
        if isinstance(obj, types.ModuleType):
            items = [(f"{name}.{k}", v) for k, v in vars(obj).items()
                     if isinstance(v, types.FunctionType) and v.__module__ == obj.__name__]
        elif isinstance(obj, type):
            items = [(f"{name}.{k}", v) for k, v in vars(obj).items() if isinstance(v, types.FunctionType)]
        else:
            items = [(name, obj)]
        for qual, fn in items:
            if not isinstance(fn, types.FunctionType):
                raise TypeError(f"off-limits entry {qual!r} is not a Python function")
            out.append((qual, fn))
    return out


@contextlib.contextmanager
def _swapped(functions: list[tuple[str, types.FunctionType]], attributes=()):
    saved = [(fn, fn.__code__) for _, fn in functions]
    saved_attrs = [(owner, attr, getattr(owner, attr)) for _, owner, attr in attributes]
    try:
        for name, fn in functions:
            fn.__code__ = _stub_code(name, len(fn.__code__.co_freevars))
        for name, owner, attr in attributes:
            setattr(owner, attr, _stub_function(name))
        yield
    finally:
        for fn, code in saved:
            fn.__code__ = code
        for owner, attr, value in saved_attrs:
            setattr(owner, attr, value)


def seal(questions) -> None:
    """Make every off-limits function of ``questions`` unusable for good (the grading sandbox's
    child, before the notebook runs): no original code is left for an answer to save and put back."""
    for q in questions:
        for name, fn in off_limits_functions(q.off_limits):
            fn.__code__ = _stub_code(name, len(fn.__code__.co_freevars))
        for name, owner, attr in off_limits_attributes(q.off_limits):
            setattr(owner, attr, _stub_function(name))


# ------------------------------------------------------------------------------ kernels
def kernel_problem(obj: Any, name: str, no_atomics: bool = False) -> str | None:
    """Why ``obj`` is not an acceptable Triton kernel, or None (``no_atomics``: any ``tl.atomic_*``
    call is a problem too)."""
    try:
        from triton.runtime.jit import KernelInterface
    except ImportError:
        return "Triton is not usable here (it is Linux-only); this question needs it"
    if obj is None:
        return f"define the kernel `{name}` (a @triton.jit function) first"
    if not isinstance(obj, KernelInterface) or not type(obj).__module__.startswith("triton."):
        return f"`{name}` must be a @triton.jit kernel, got {type(obj).__name__}"
    fn = getattr(obj, "fn", None)
    try:
        src = textwrap.dedent(inspect.getsource(fn))
        tree = ast.parse(src)
    except (OSError, TypeError, SyntaxError):
        return None                                   # no source to read: nothing more to say
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in ("torch", "np", "numpy"):
            return (f"`{name}` uses `{node.id}` inside the kernel: a Triton kernel may only use "
                    "tl.* operations on the pointers it is given")
        if no_atomics and isinstance(node, ast.Attribute) and node.attr.startswith("atomic_"):
            return (f"`{name}` calls `{node.attr}`: this question asks for a kernel without atomics, in "
                    "which exactly one program computes and stores each output element")
    return None


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


def _bytes(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes of a tensor's whole storage, as a uint8 tensor (a copy)."""
    return torch.empty(0, dtype=torch.uint8, device=t.device).set_(t.untyped_storage()).clone()


def _rebuild(t: torch.Tensor, raw: torch.Tensor) -> torch.Tensor:
    """A tensor with ``t``'s dtype, offset, size and strides over a copy of the bytes ``raw``."""
    return torch.empty(0, dtype=t.dtype, device=t.device).set_(
        raw.clone().untyped_storage(), t.storage_offset(), t.size(), t.stride())


class _Launches:
    """What the question's kernel did during one call: how often it ran, and for every storage it
    was given the bytes before the launch and after it, with the launch itself kept to replay."""

    def __init__(self):
        self.count = 0
        self.seen: dict[int, tuple] = {}          # storage -> (before, after, run, args, kwargs, pre)

    def record(self, run, args, kwargs):
        tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
        pre = {id(a): _bytes(a) for a in tensors}
        out = run(*args, **kwargs)
        self.count += 1
        for a in tensors:
            self.seen[_storage(a)] = (pre[id(a)], _bytes(a), run, args, kwargs, pre)
        return out

    def wrote(self, value: torch.Tensor) -> bool:
        """Does ``value`` hold exactly what the kernel stored into it?

        The bytes must be those left by the kernel's last launch on that storage, and that launch
        must have written them: when the launch left the buffer unchanged (its uninitialised
        memory may already hold the answer), the launch is replayed on copies with this buffer
        filled with NaN, and must overwrite it.
        """
        rec = self.seen.get(_storage(value))
        if rec is None:
            return False
        before, after, run, args, kwargs, pre = rec
        if not torch.equal(after, _bytes(value)):
            return False                                  # changed after the kernel left it
        if not torch.equal(before, after):
            return True
        target = _storage(value)

        def copy(a):
            if not isinstance(a, torch.Tensor):
                return a
            raw = pre[id(a)].clone()
            if _storage(a) == target:
                raw.fill_(0xFF)                           # all-ones bytes: NaN in every float format
            return _rebuild(a, raw)
        cargs, ckw = [copy(a) for a in args], {k: copy(v) for k, v in kwargs.items()}
        poisoned = [c for a, c in zip(list(args) + list(kwargs.values()), cargs + list(ckw.values()))
                    if isinstance(a, torch.Tensor) and _storage(a) == target]
        marks = [_bytes(c) for c in poisoned]
        run(*cargs, **ckw)
        return any(not torch.equal(m, _bytes(c)) for m, c in zip(marks, poisoned))


@contextlib.contextmanager
def _count_launches(kernel: Any, launches: _Launches):
    """Record every launch of ``kernel`` during the block (see :class:`_Launches`)."""
    if kernel is None or not hasattr(kernel, "run"):
        yield
        return
    original = kernel.run
    had_own = "run" in vars(kernel)
    kernel.run = lambda *args, **kwargs: launches.record(original, args, kwargs)
    try:
        yield
    finally:
        if had_own:
            kernel.run = original
        else:
            del kernel.run


# ------------------------------------------------------------------------------ execution
def _not_attempted(e: BaseException) -> bool:
    seen = 0
    while e is not None and seen < 5:                   # the interpreter wraps a kernel's raise
        if isinstance(e, NotImplementedError):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


def _error_of(e: BaseException) -> dict:
    if _not_attempted(e):
        return {"kind": "not_attempted", "type": "NotImplementedError", "message": "not attempted"}
    if isinstance(e, OffLimits):
        return {"kind": "rule", "type": "OffLimits", "message": clean_message(e, 200)}
    if isinstance(e, SystemExit):
        return {"kind": "raised", "type": "SystemExit", "message": ""}
    return {"kind": "raised", "type": type(e).__name__, "message": clean_message(e)}


def execute(question: Question, namespace: dict, op: str, payload: tuple) -> Reply:
    """Run one operation of ``question`` on the answer found in ``namespace``; never raises
    (except :class:`CheckTimeout`, the in-process time limit)."""
    try:
        return _execute(question, namespace, op, payload)
    except CheckTimeout:
        raise
    except BaseException as e:  # noqa: BLE001 - the answer broke our set-up: report, do not die
        return Reply(error={"kind": "raised", "type": type(e).__name__, "message": clean_message(e)})


def _execute(question: Question, namespace: dict, op: str, payload: tuple) -> Reply:
    reply = Reply()
    kernel = namespace.get(question.kernel) if question.kernel else None
    if question.kernel:
        reply.kernel_problem = kernel_problem(kernel, question.kernel, question.no_atomics)
    if op == "launch":
        if reply.kernel_problem:
            reply.error = {"kind": "rule", "type": "NotAKernel", "message": reply.kernel_problem}
            return reply
        target = kernel
    else:
        target = namespace.get(question.function)
        if target is None:
            reply.error = {"kind": "rule", "type": "Missing",
                           "message": f"define a function named `{question.function}` first"}
            return reply
        if not callable(target) or isinstance(target, type):
            reply.error = {"kind": "rule", "type": "NotAFunction",
                           "message": f"`{question.function}` should be a function, got {type(target).__name__}"}
            return reply
    forbid = _Forbid(forbidden_keys(question.forbidden))
    swap = off_limits_functions(question.off_limits)
    swap_attrs = off_limits_attributes(question.off_limits)
    launches = _Launches()
    del _OFF_LIMITS_HITS[:]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            memory = LiveTensorBytes() if question.measure_memory and op == "call" else contextlib.nullcontext()
            with _swapped(swap, swap_attrs), _count_launches(kernel, launches), forbid, memory:
                reply.value = _run(op, target, payload)
            reply.peak_bytes = getattr(memory, "peak", 0)
            if isinstance(reply.value, torch.Tensor) and launches.count:
                reply.from_kernel = launches.wrote(reply.value)
        except CheckTimeout:
            raise
        except BaseException as e:    # noqa: BLE001 - sys.exit, KeyboardInterrupt, anything
            reply.error = _error_of(e)
    hits = forbid.hits + _OFF_LIMITS_HITS
    if hits and (reply.error is None or reply.error["kind"] != "rule"):
        # caught and hidden by the answer: still a breach of the rule
        first = hits[0]
        msg = f"this question forbids `{first}`" if first in question.forbidden else _off_limits_message(first)
        reply.error, reply.value = {"kind": "rule", "type": "OffLimits", "message": msg}, None
    reply.launches = launches.count
    reply.warnings = [(w.category.__name__, clean_message(w.message)) for w in caught[:5]]
    return reply


def _run(op: str, target, payload: tuple):
    if op == "call":
        args, kwargs = payload
        return target(*args, **kwargs)
    if op == "grad":
        args, wrt, upstream = payload
        args = list(args)
        args[wrt] = args[wrt].detach().requires_grad_(True)
        out = target(*args)
        if not isinstance(out, torch.Tensor) or not out.requires_grad:
            return (out, None)
        (grad,) = torch.autograd.grad(out, args[wrt], upstream, allow_unused=True)
        return (out, grad)
    if op == "launch":
        grid, args, meta = payload
        target[tuple(grid)](*args, **meta)
        return list(args)
    raise ValueError(f"unknown operation {op!r}")


# ------------------------------------------------------------------------------ answers
class Answer:
    """What a check holds: the reader's answer to one question, wherever it runs."""

    question: Question
    last: Reply | None = None

    def _do(self, op: str, payload: tuple) -> Reply:          # pragma: no cover - abstract
        raise NotImplementedError

    def __call__(self, *args, **kwargs):
        self.last = self._do("call", (args, kwargs))
        return self.last.unwrap()

    def with_grad(self, args: tuple, wrt: int, upstream: torch.Tensor):
        """``(out, d<out, upstream>/d args[wrt])``; the gradient is None when ``out`` does not
        depend differentiably on that argument."""
        self.last = self._do("grad", (tuple(args), wrt, upstream))
        return self.last.unwrap()

    def launch(self, grid: tuple, *args, **meta) -> list:
        """Launch the question's kernel with our own grid and arguments; returns the arguments
        after the launch (the output buffers hold what the kernel stored)."""
        self.last = self._do("launch", (tuple(grid), list(args), meta))
        return self.last.unwrap()

    def require_launched(self) -> None:
        """After a call: the question's kernel must be a real kernel, launched by that call, and
        the call must return a buffer that kernel was given (so the kernel computed it)."""
        r = self.last
        if r is None:
            raise CheckFailed("internal: require_launched() before any call")
        if r.kernel_problem:
            raise CheckFailed(r.kernel_problem)
        if r.launches == 0:
            raise CheckFailed(f"`{self.question.function}` never launched `{self.question.kernel}`: "
                              "the work must be done by your kernel")
        if not r.from_kernel:
            raise CheckFailed(f"`{self.question.function}` must return the output buffer that "
                              f"`{self.question.kernel}` stored into, as the kernel left it (not a tensor "
                              "computed or written otherwise)")

    def time_limit(self, seconds: float):
        return contextlib.nullcontext()


class LocalAnswer(Answer):
    """The answer in this process (``check("q")`` in a notebook, unit tests).  Convenient and
    fast; the command-line grader uses the sandbox instead."""

    def __init__(self, question: Question, namespace: dict):
        self.question, self.namespace = question, namespace

    @classmethod
    def from_callable(cls, question: Question, fn, kernel=None) -> "LocalAnswer":
        ns = {question.function: fn}
        if question.kernel and kernel is not None:
            ns[question.kernel] = kernel
        return cls(question, ns)

    def _do(self, op: str, payload: tuple) -> Reply:
        reply = execute(self.question, self.namespace, op, payload)
        reply.value = from_wire(to_wire(reply.value))       # the same data the sandbox would send
        return reply

    def time_limit(self, seconds: float):
        return time_limit(seconds)
