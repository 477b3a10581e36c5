"""The grader holds against a student who wants a free grade.

Every attack below took one cell or one line against the first grader.  Each attack is written
here as notebook code; the test grades a notebook carrying it with the command-line grader (the
score that counts) and asserts that the attacked question scores 0 while the questions answered
honestly keep their true scores.  Fast in-process variants cover ``check()``'s own path.
"""
import json
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest
import torch

from hrvit_edu.grading import Check, Question, grade_function, run_question
from hrvit_edu.grading.__main__ import grade_notebook

ROOT = Path(__file__).resolve().parents[1]
PREFACE = ROOT / "exercises" / "solutions" / "00_preface.ipynb"
HRVIT = ROOT / "exercises" / "solutions" / "01_hrvit.ipynb"
PREFACE_STUB = ROOT / "exercises" / "00_preface.ipynb"


def _variant(source: Path, out: Path, answers: dict[str, str] = (), extra: list[str] = (),
             before: list[str] = ()) -> Path:
    """Copy a notebook, replacing the cell that defines each named function with new code,
    inserting ``before`` cells after the set-up cell and appending ``extra`` cells."""
    nb = nbformat.read(source, as_version=4)
    for name, code in dict(answers).items():
        cells = [c for c in nb.cells if c.cell_type == "code" and f"def {name}(" in c.source]
        assert len(cells) == 1, name
        cells[0].source = code
    for i, code in enumerate(before):
        nb.cells.insert(2 + i, nbformat.v4.new_code_cell(code))
    nb.cells += [nbformat.v4.new_code_cell(code) for code in extra]
    nbformat.write(nb, out)
    return out


def _scores(path: Path, **kw) -> tuple[dict, list[str]]:
    _, results, notes = grade_notebook(path, seed=7, **kw)
    return {r.id: r for r in results}, notes


def _full(result) -> bool:
    return result.points == result.max_points and not result.messages


# ------------------------------------------------------------------------------ attack code
FORGE_RESULTS_FILE = '''
import json, os, glob
line = json.dumps({"id": "preface.miou", "points": 1000, "max_points": 3, "messages": []})
for path in [os.environ.get("HRVIT_EDU_GRADING_OUT", "")] + glob.glob("/tmp/*/results.jsonl"):
    if path:
        with open(path, "a") as fh:
            fh.write((line + "\\n") * 10)
print("preface.miou: 1000/3  (full marks)")
'''

REPLACE_RUN_QUESTION = '''
import hrvit_edu.grading as G, hrvit_edu.grading.core as C, hrvit_edu.grading.sandbox as S
def run_question(question, fn, **kw):
    return C.QuestionResult(question.id, question.max_points, question.max_points, [])
G.run_question = C.run_question = S.run_question = run_question
'''

PATCH_ASSERT_MATCHES = '''
import hrvit_edu.grading.checks.preface as P, hrvit_edu.grading.compare as CMP
P.assert_matches = CMP.assert_matches = lambda *a, **k: None
P._miou_close = lambda *a, **k: None
'''

MIOU_FROM_PACKAGE = '''
from hrvit_edu.train import confusion_matrix, metrics_from_confusion
def mean_iou(pred, target, num_classes, ignore_index=255):
    return metrics_from_confusion(confusion_matrix(pred, target, num_classes, ignore_index)).miou
'''

LR_FROM_PACKAGE = '''
from hrvit_edu.train import Budget, lr_factor
def warmup_cosine(step, total_steps, warmup_steps, base_lr, min_lr_ratio):
    budget = Budget(steps=total_steps, warmup_steps=warmup_steps, min_lr_ratio=min_lr_ratio)
    return base_lr * lr_factor(step, budget)
'''

BOXES_FROM_GRADER = '''
from hrvit_edu.grading.checks.preface import _ref_boxes
def class_boxes(mask):
    return _ref_boxes(mask.numpy())
'''

L2_PLAIN_TORCH = '''
def l2norm_kernel(X, Y, n_cols, stride_x, stride_y, eps, BLOCK=16):
    pass

def l2_normalize_rows(x):
    xf = x.float()
    return (xf / xf.norm(dim=-1, keepdim=True).clamp_min(1e-6)).to(x.dtype)
'''

LR_SWALLOWS_TIMEOUT = '''
import time
def warmup_cosine(step, total_steps, warmup_steps, base_lr, min_lr_ratio):
    while True:
        try:
            time.sleep(0.05)
        except Exception:
            continue
'''

BOXES_SYS_EXIT = '''
import sys
def class_boxes(mask):
    sys.exit(0)
'''

SOFTMAX_WRONG_AND_PATCHING = '''
import torch
def softmax_backward(y, dy, dim=-1):
    import hrvit_edu.grading.checks.preface as P, hrvit_edu.grading.compare as CMP
    P.assert_matches = CMP.assert_matches = lambda *a, **k: None
    return torch.zeros_like(y)
'''

KRON_MATERIALISED = '''
def kron_matvec(A, B, x):
    return x @ torch.kron(A, B).T
'''

KRON_HIDDEN_KRON = '''
def kron_matvec(A, B, x):
    try:
        M = getattr(torch, "kr" + "on")(A, B)       # caught and hidden: still seen
    except Exception:
        M = torch.einsum("ij,kl->ikjl", A, B).reshape(A.shape[0] * B.shape[0], -1)
    return x @ M.T
'''

DES_FROM_PACKAGE = '''
from hrvit_edu.kernels.des import des_reference
def des_forward(x, A, b_A, B, b_B):
    return des_reference(x.reshape(-1, x.shape[-1]), A, b_A, B, b_B).reshape(x.shape)
'''

STRIPES_FROM_PACKAGE = '''
from hrvit_edu.models.hrvit import stripe_partition
def stripe_windows(x, s, orientation):
    return stripe_partition(x, s, orientation)
'''

RIGHT_FACTOR_PLAIN_TORCH = '''
import triton, triton.language as tl

@triton.jit
def right_factor_kernel(X, BW, BB, Y, M, P: tl.constexpr, BLOCK_M: tl.constexpr, PP: tl.constexpr):
    pass                                   # a kernel that does nothing ...

def right_factor(x, B, b_B):
    right_factor_kernel[(1,)](x, B, b_B, x, 0, P=x.shape[1], BLOCK_M=16, PP=16)   # ... launched for show
    return (x.float() @ B.float().T + b_B.float()).to(x.dtype)
'''

KRON_IGNORES_SIGALRM = '''
import signal
def kron_matvec(A, B, x):
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    while True:
        pass
'''

DES_KEYBOARD_INTERRUPT = '''
def des_forward(x, A, b_A, B, b_B):
    raise KeyboardInterrupt
'''

STRIPES_OS_EXIT = '''
import os
def stripe_windows(x, s, orientation):
    os._exit(3)
'''

HANGING_TOP_LEVEL_CELL = '''
import signal
signal.signal(signal.SIGALRM, signal.SIG_IGN)
while True:
    pass
'''


# ------------------------------------------------------------------------------ graded notebooks
@pytest.fixture(scope="module")
def preface_forged(tmp_path_factory):
    path = _variant(PREFACE_STUB, tmp_path_factory.mktemp("forged") / "00_preface.ipynb",
                    extra=[FORGE_RESULTS_FILE, REPLACE_RUN_QUESTION, PATCH_ASSERT_MATCHES])
    return _scores(path)[0]


@pytest.fixture(scope="module")
def preface_reuse(tmp_path_factory):
    path = _variant(PREFACE, tmp_path_factory.mktemp("reuse") / "00_preface.ipynb",
                    answers={"mean_iou": MIOU_FROM_PACKAGE, "warmup_cosine": LR_FROM_PACKAGE,
                             "class_boxes": BOXES_FROM_GRADER, "l2_normalize_rows": L2_PLAIN_TORCH},
                    extra=[PATCH_ASSERT_MATCHES])
    return _scores(path)[0]


@pytest.fixture(scope="module")
def preface_escapes(tmp_path_factory):
    path = _variant(PREFACE, tmp_path_factory.mktemp("escapes") / "00_preface.ipynb",
                    answers={"warmup_cosine": LR_SWALLOWS_TIMEOUT, "class_boxes": BOXES_SYS_EXIT,
                             "softmax_backward": SOFTMAX_WRONG_AND_PATCHING})
    t0 = time.perf_counter()
    scores = _scores(path)[0]
    return scores, time.perf_counter() - t0


@pytest.fixture(scope="module")
def hrvit_reuse(tmp_path_factory):
    path = _variant(HRVIT, tmp_path_factory.mktemp("hreuse") / "01_hrvit.ipynb",
                    answers={"kron_matvec": KRON_MATERIALISED, "des_forward": DES_FROM_PACKAGE,
                             "stripe_windows": STRIPES_FROM_PACKAGE, "right_factor": RIGHT_FACTOR_PLAIN_TORCH})
    return _scores(path)[0]


@pytest.fixture(scope="module")
def hrvit_escapes(tmp_path_factory):
    path = _variant(HRVIT, tmp_path_factory.mktemp("hescapes") / "01_hrvit.ipynb",
                    answers={"kron_matvec": KRON_IGNORES_SIGALRM, "des_forward": DES_KEYBOARD_INTERRUPT,
                             "stripe_windows": STRIPES_OS_EXIT},
                    before=[HANGING_TOP_LEVEL_CELL])
    t0 = time.perf_counter()
    scores, notes = _scores(path, cell_limit=15)
    return scores, notes, time.perf_counter() - t0


# ------------------------------------------------------------------------------ §1 forged results
@pytest.mark.slow
def test_forged_results_file_and_replaced_run_question_score_nothing(preface_forged):
    # the untouched stubs plus cells that append forged lines, replace run_question and
    # patch the comparisons: 0 everywhere, and never more than the maximum
    assert sum(r.points for r in preface_forged.values()) == 0
    for r in preface_forged.values():
        assert r.messages[0].startswith("not attempted yet")


@pytest.mark.slow
def test_patching_the_checks_does_not_reach_the_grader(preface_escapes):
    scores, _ = preface_escapes
    r = scores["preface.softmax_grad"]          # returns zeros and patches assert_matches
    assert r.points == 0 and any("max abs error" in m or "gradcheck" in m for m in r.messages), r.messages


# ------------------------------------------------------------------------------ §2 free marks
@pytest.mark.slow
@pytest.mark.parametrize("qid, needle", [
    ("preface.miou", "hrvit_edu.train.metrics.confusion_matrix` is part of the package"),
    ("preface.lr_schedule", "hrvit_edu.train.budget.lr_factor` is part of the package"),
    ("preface.digit_boxes", "checks.preface._ref_boxes` is part of the package"),
    ("preface.l2norm_kernel", "`l2norm_kernel` must be a @triton.jit kernel, got function"),
])
def test_package_reuse_and_torch_only_kernels_score_zero(preface_reuse, qid, needle):
    r = preface_reuse[qid]
    assert r.points == 0 and any(needle in m for m in r.messages), r.messages


@pytest.mark.slow
def test_honest_answers_keep_their_scores_beside_attacks(preface_reuse, hrvit_reuse, preface_escapes, hrvit_escapes):
    assert _full(preface_reuse["preface.softmax_grad"])
    assert _full(hrvit_reuse["hrvit.fusion"])
    assert _full(preface_escapes[0]["preface.miou"]) and _full(preface_escapes[0]["preface.l2norm_kernel"])
    assert _full(hrvit_escapes[0]["hrvit.fusion"]) and _full(hrvit_escapes[0]["hrvit.des_kernel"])


@pytest.mark.slow
@pytest.mark.parametrize("qid, needle", [
    ("hrvit.kron_fold", "this question forbids `torch.kron`"),
    ("hrvit.des", "hrvit_edu.kernels.des.des_reference` is part of the package"),
    ("hrvit.stripes", "hrvit_edu.models.hrvit.stripe_partition` is part of the package"),
    ("hrvit.des_kernel", "what your kernel stored"),
    ("hrvit.des_kernel", "must return the output buffer that `right_factor_kernel` stored into"),
])
def test_forbidden_calls_package_reuse_and_fake_kernels_score_zero(hrvit_reuse, qid, needle):
    r = hrvit_reuse[qid]
    assert r.points == 0 and any(needle in m for m in r.messages), r.messages


def test_a_forbidden_call_caught_by_the_answer_still_counts():
    ns = {"torch": torch}
    exec(KRON_HIDDEN_KRON, ns)
    r = grade_function("hrvit.kron_fold", ns["kron_matvec"], seed=0)
    assert r.points == 0 and any("forbids `torch.kron`" in m for m in r.messages), r.messages


def test_package_functions_are_restored_after_grading():
    from hrvit_edu.models.hrvit import stripe_partition
    ns = {}
    exec(STRIPES_FROM_PACKAGE, ns)
    assert grade_function("hrvit.stripes", ns["stripe_windows"], seed=0).points == 0
    win, valid = stripe_partition(torch.zeros(1, 4, 4, 2), 2, "h")           # works again
    assert win.shape == (2, 8, 2) and valid.tolist() == [8, 8]


def _lr_memorised():
    """Right on every visible case of the checks (read from the package source), 0 elsewhere."""
    from hrvit_edu.grading.checks.preface import _lr_ref
    table = {(s, 100, 10, 3e-3, 0.05): _lr_ref(s, 100, 10, 3e-3, 0.05) for s in range(100)}
    table.update({(s, 100, 0, 3e-3, 0.1): _lr_ref(s, 100, 0, 3e-3, 0.1) for s in (100, 150)})

    def warmup_cosine(step, total_steps, warmup_steps, base_lr, min_lr_ratio):
        return table.get((step, total_steps, warmup_steps, base_lr, min_lr_ratio), 0.0)
    return warmup_cosine


def test_hard_coded_outputs_fail_the_hidden_inputs():
    r = grade_function("preface.lr_schedule", _lr_memorised(), seed=123)
    assert r.points == r.max_points - 1 and r.messages[0].startswith("hidden schedules:"), r
    # the hidden inputs change from run to run
    from hrvit_edu.grading import hidden_rng
    from hrvit_edu.grading.core import _HIDDEN_SEED
    draws = set()
    for seed in (None, None, None):
        token = _HIDDEN_SEED.set(__import__("secrets").randbits(62) if seed is None else seed)
        draws.add(hidden_rng(2).random())
        _HIDDEN_SEED.reset(token)
    assert len(draws) == 3


def test_a_kernel_body_that_uses_torch_is_refused():
    import triton
    import triton.language as tl

    @triton.jit
    def l2norm_kernel(X, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        torch.nn.functional.normalize(X)

    def l2_normalize_rows(x):
        l2norm_kernel[(1,)](x, x, 1, 1, 1, 1e-6, BLOCK=16)
        return x
    r = grade_function("preface.l2norm_kernel", l2_normalize_rows, kernel=l2norm_kernel, seed=0)
    assert r.points == 0 and any("uses `torch` inside the kernel" in m for m in r.messages), r.messages


def test_a_launcher_that_never_launches_the_kernel_loses_the_launcher_checks():
    from grading_kernels import l2_kernel_ok

    def l2_normalize_rows(x):
        xf = x.float()
        return (xf / (xf * xf).sum(-1, keepdim=True).sqrt().clamp_min(1e-6)).to(x.dtype)
    r = grade_function("preface.l2norm_kernel", l2_normalize_rows, kernel=l2_kernel_ok, seed=0)
    assert r.points == 1, r                        # only the grader's own launch of the kernel
    assert any("never launched `l2norm_kernel`" in m for m in r.messages), r.messages


# ------------------------------------------------------------------------------ §3 limits and exits
@pytest.mark.slow
def test_an_answer_that_swallows_the_timeout_costs_only_its_question(preface_escapes):
    scores, seconds = preface_escapes
    r = scores["preface.lr_schedule"]
    assert r.points == 0 and "timed out after 20 s" in r.messages[0], r.messages
    assert seconds < 150


@pytest.mark.slow
def test_sys_exit_costs_only_its_question(preface_escapes):
    r = preface_escapes[0]["preface.digit_boxes"]
    assert r.points == 0 and "called sys.exit()" in r.messages[0], r.messages


@pytest.mark.slow
def test_an_answer_ignoring_sigalrm_is_killed_at_the_limit(hrvit_escapes):
    scores, _, seconds = hrvit_escapes
    r = scores["hrvit.kron_fold"]
    assert r.points == 0 and "timed out after 20 s" in r.messages[0], r.messages
    assert seconds < 150


@pytest.mark.slow
def test_keyboard_interrupt_and_os_exit_cost_only_their_question(hrvit_escapes):
    scores = hrvit_escapes[0]
    assert scores["hrvit.des"].points == 0 and "raised KeyboardInterrupt" in scores["hrvit.des"].messages[0]
    assert scores["hrvit.stripes"].points == 0
    assert "ended the grading process" in scores["hrvit.stripes"].messages[0]


@pytest.mark.slow
def test_a_hanging_top_level_cell_is_skipped_and_reported(hrvit_escapes):
    _, notes, _ = hrvit_escapes
    assert notes == ["cell 2 did not finish within 15 s: it was skipped while loading the answers"]


def test_in_process_limits_hold_against_except_exception():
    def loops(answer):
        answer()

    def stubborn():
        import time as t
        while True:
            try:
                t.sleep(0.01)
            except Exception:          # noqa: BLE001 - the attack
                continue
    t0 = time.perf_counter()
    r = run_question(Question("test.q", "t", "f", (Check("only", 2, loops),), time_limit=0.5), stubborn)
    assert r.points == 0 and "timed out after 0.5 s" in r.messages[0]
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize("exc, message", [(SystemExit, "called sys.exit()"),
                                          (KeyboardInterrupt, "raised KeyboardInterrupt")])
def test_in_process_exits_cost_only_the_question(exc, message):
    def answer(*a, **k):
        raise exc
    r = grade_function("preface.miou", answer, seed=0)
    assert r.points == 0 and message in r.messages[0]
    assert grade_function("preface.lr_schedule", lambda s, t, w, b, r: b, seed=0).points < 4   # still grading


def test_points_never_exceed_the_maximum():
    def count(answer):
        answer()
    q = Question("test.q", "t", "f", (Check("a", 2, count), Check("b", 3, count)))
    r = run_question(q, lambda: None)
    assert r.points == r.max_points == 5


@pytest.mark.slow
def test_cli_reports_only_its_own_scores(tmp_path):
    path = _variant(PREFACE_STUB, tmp_path / "00_preface.ipynb", extra=[FORGE_RESULTS_FILE, REPLACE_RUN_QUESTION])
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.grading", str(path), "--json",
                        "--only", "preface.miou", "--only", "preface.lr_schedule"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["score"] == 0 and [q["id"] for q in report["questions"]] == ["preface.miou", "preface.lr_schedule"]
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.grading", str(path), "--only", "preface.nope"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "unknown question" in r.stderr


# ------------------------------------------------------------------------------ red-team findings
def test_forbidden_calls_by_their_aten_names_and_numpy_are_refused():
    import numpy as np
    kron_aten = lambda A, B, x: x @ torch.ops.aten.kron(A, B).T                      # noqa: E731
    kron_numpy = lambda A, B, x: x @ torch.from_numpy(np.kron(A.numpy(), B.numpy())).T  # noqa: E731
    sm_aten = lambda y, dy, dim=-1: torch.ops.aten._softmax_backward_data(dy, y, dim, y.dtype)  # noqa: E731
    for qid, fn, needle in [("hrvit.kron_fold", kron_aten, "forbids `torch."),
                            ("hrvit.kron_fold", kron_numpy, "forbids `numpy.kron`"),
                            ("preface.softmax_grad", sm_aten, "forbids `torch._softmax_backward_data`")]:
        r = grade_function(qid, fn, seed=0)
        assert r.points == 0 and any(needle in m for m in r.messages), (qid, r.messages)
    assert np.kron(np.eye(2), np.ones((1, 1))).shape == (2, 2)                       # restored


def test_a_kernel_launched_for_show_then_overwritten_scores_nothing():
    import triton
    import triton.language as tl

    @triton.jit
    def l2norm_kernel(X, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        pass

    def l2_normalize_rows(x):
        y = torch.empty_like(x)
        l2norm_kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), y.stride(0), 1e-6, BLOCK=16)
        xf = x.float()
        return y.copy_((xf / xf.square().sum(-1, keepdim=True).sqrt().clamp_min(1e-6)).to(x.dtype))
    r = grade_function("preface.l2norm_kernel", l2_normalize_rows, kernel=l2norm_kernel, seed=0)
    assert r.points == 0, r
    assert any("as the kernel left it" in m for m in r.messages), r.messages


def test_dict_keys_that_are_tensors_are_plain_numbers():
    def class_boxes(mask):
        boxes = {}
        for c in torch.unique(mask):                   # tensor keys: a correct, common way to write it
            if c.item() in (10, 255):
                continue
            ys, xs = torch.nonzero(mask == c, as_tuple=True)
            boxes[c] = (ys.min(), xs.min(), ys.max() + 1, xs.max() + 1)
        return boxes
    r = grade_function("preface.digit_boxes", class_boxes, seed=0)
    assert r.points == r.max_points, r


RESTORE_THE_CODE = '''
from hrvit_edu.models.hrvit import stripe_partition
_code = stripe_partition.__code__
def stripe_windows(x, s, orientation):
    stripe_partition.__code__ = _code
    return stripe_partition(x, s, orientation)
'''

SPAWN_AND_LEAVE = '''
import subprocess, pathlib, os
_p = subprocess.Popen(["sleep", "300"])
pathlib.Path(os.environ.get("ORPHAN_PID_FILE", "orphan.pid")).write_text(str(_p.pid))
'''


@pytest.mark.slow
def test_saving_the_package_code_at_load_time_does_not_help_and_leftovers_die(tmp_path, monkeypatch):
    import os
    pid_file = tmp_path / "orphan.pid"
    monkeypatch.setenv("ORPHAN_PID_FILE", str(pid_file))
    path = _variant(HRVIT, tmp_path / "01_hrvit.ipynb", answers={"stripe_windows": RESTORE_THE_CODE},
                    extra=[SPAWN_AND_LEAVE])
    scores, _ = _scores(path, only=["hrvit.stripes"])
    r = scores["hrvit.stripes"]
    assert r.points == 0 and any("stripe_partition` is part of the package" in m for m in r.messages), r
    pid = int(pid_file.read_text())
    time.sleep(0.5)
    alive = os.path.exists(f"/proc/{pid}") and "Z" not in open(f"/proc/{pid}/stat").read().split()[2]
    assert not alive, "a process the notebook started outlived the grading"


@pytest.mark.slow
def test_the_cli_launches_kernels_on_a_cpu_without_any_environment_switch():
    import os
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    r = subprocess.run([sys.executable, "-m", "hrvit_edu.grading", str(PREFACE), "--json",
                        "--only", "preface.l2norm_kernel"], capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    q = json.loads(r.stdout)["questions"][0]
    assert q["points"] == q["max_points"] == 4, q


def test_a_buffer_that_already_held_the_answer_is_judged_by_replaying_the_launch():
    """Uninitialised memory can already hold the answer (a freed block of an earlier identical
    call): the grader then replays the launch on a NaN-filled copy to see who writes it."""
    import triton
    import triton.language as tl
    from grading_kernels import l2_kernel_ok

    @triton.jit
    def l2_noop(X, Y, n_cols, stride_x, stride_y, eps, BLOCK: tl.constexpr):
        pass

    def launcher(kernel):
        def l2_normalize_rows(x):
            xf = x.float()
            y = (xf / xf.square().sum(-1, keepdim=True).sqrt().clamp_min(1e-6)).to(x.dtype)   # answer first
            kernel[(x.shape[0],)](x, y, x.shape[1], x.stride(0), y.stride(0), 1e-6,
                                  BLOCK=triton.next_power_of_2(max(x.shape[1], 16)))
            return y
        return l2_normalize_rows
    honest = grade_function("preface.l2norm_kernel", launcher(l2_kernel_ok), kernel=l2_kernel_ok, seed=0)
    assert honest.points == honest.max_points, honest          # the kernel rewrote the same values
    cheat = grade_function("preface.l2norm_kernel", launcher(l2_noop), kernel=l2_noop, seed=0)
    assert cheat.points == 0 and any("as the kernel left it" in m for m in cheat.messages), cheat
