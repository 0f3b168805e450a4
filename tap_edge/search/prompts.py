"""Prompt templates (files users can read and edit), tolerant reply parsing and the llama.cpp grammar.

Templates live in ``tap_edge/templates/evolve_{init,mutation,crossover}.txt`` (override the folder with
``--templates DIR``). They are ``string.Template`` texts: ``${layerstats_api}`` (the LAYER DICT reference, which
the packaged templates leave to :func:`system_prompt`), ``${bits_example}``,
``${parent_code}``, ``${parent_reasoning}``, ``${parent_fitness}``, ``${parent2_*}`` and ``${errors}`` are
filled in; unknown ``$`` fields are left as they are.

A reply is reasoning T plus code C. Parsing accepts code fences with or without a language, prose before
and after, ``<think>`` blocks, a missing closing fence, indented code and bare code without fences; the
code is then checked strictly by :func:`tap_edge.plan.proxies.sandbox.vet_source` (the contract) before it runs.

Replies and programs are LLM-controlled text: a reply longer than :data:`MAX_REPLY_CHARS` is refused before any
pattern runs on it, and every syntax tree here comes from :func:`~tap_edge.plan.proxies.sandbox.parse_program`
(size and nesting bounded), so no reply can make the search recurse past Python's limit or run out of memory.
"""

from __future__ import annotations

import ast
import hashlib
import re
import string
import textwrap
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from tap_edge.core.errors import UserError
from tap_edge.plan.proxies.sandbox import MAX_SOURCE_CHARS, SandboxRejection, one_line, parse_program

TEMPLATES = ("init", "mutation", "crossover")

#: A reply longer than this is refused unread (a program may have MAX_SOURCE_CHARS; prose around it less).
MAX_REPLY_CHARS = 2 * MAX_SOURCE_CHARS
#: What a prompt shows of a parent's program at most (small models have small contexts).
MAX_PROMPT_CODE_CHARS = 6_000

SYSTEM_PROMPT = ("You are an expert in neural network quantization who writes short, correct Python with numpy. "
                 "Answer exactly in the requested format.")


def system_prompt(layerstats_api: str) -> str:
    """The system message of every prompt: :data:`SYSTEM_PROMPT` and the LAYER DICT reference (the keys of
    ``layer``). It is the same for the three templates, so it comes first and identical in every request: a
    llama.cpp server keeps the previous request's tokens and evaluates only what follows the common prefix
    (about a thousand tokens of reference text each time, most of a small model's time on 2 cores)."""
    return f"{SYSTEM_PROMPT}\n\nLAYER DICT (the keys of `layer`, the statistics of one layer):\n{layerstats_api}"

#: llama.cpp GBNF grammar: forces "REASONING: ..." then a python block with the required header.
PROXY_GRAMMAR = (
    'root ::= "REASONING: " reason "\\n\\n```python\\nimport numpy as np\\nimport math\\n\\n'
    'def proxy(layer, bits):\\n" body "```"\n'
    'reason ::= [^\\n`]{8,300}\n'
    'body ::= line{1,30}\n'
    'line ::= "    " [^\\n`]{1,100} "\\n"\n'
)

#: The program skeleton of the "score" grammar: the model writes the lines between ``decay`` and ``return``
#: (a sensitivity score and the decay of the cost with the width: the paper's score + allocation function).
SCORE_SKELETON_HEAD = (
    "import numpy as np\nimport math\n\ndef proxy(layer, bits):\n"
    "    w = np.asarray(layer[\"weight\"], dtype=float)\n"
    "    score = float(np.mean(w ** 2)) * w.size\n"
    "    decay = 1.386\n"
)
SCORE_SKELETON_TAIL = "    return [max(0.0, float(score)) * math.exp(-float(decay) * b) for b in bits]\n"


def _gbnf_literal(text: str) -> str:
    esc = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return '"' + esc.replace("\t", "\\t") + '"'


#: llama.cpp GBNF grammar of the "score" form: header, defaults and the return line are fixed; the model
#: writes 1-12 lines (not starting with "r", so no early return) that set ``score`` and ``decay``.
SCORE_GRAMMAR = (
    'root ::= "REASONING: " reason "\\n\\n```python\\n" head body tail "```"\n'
    f"head ::= {_gbnf_literal(SCORE_SKELETON_HEAD)}\n"
    f"tail ::= {_gbnf_literal(SCORE_SKELETON_TAIL)}\n"
    'reason ::= [^\\n`]{8,300}\n'
    'body ::= line{1,8}\n'
    'line ::= "    " [^r\\n`] [^\\n`]{0,79} "\\n"\n'
)

#: llama.cpp GBNF grammar of an edit (mutation / crossover in "edit" mode): reasoning and 1-8 code lines.
EDIT_GRAMMAR = (
    'root ::= "REASONING: " reason "\\n\\n```python\\n" body "```"\n'
    'reason ::= [^\\n`]{8,300}\n'
    'body ::= line{1,8}\n'
    'line ::= [^\\n`]{1,90} "\\n"\n'
)

#: Features a ``reweight`` edit may combine: LayerStats entries (tap_edge.plan.stats.LAYERSTATS_API) put on an O(1)
#: scale, so that a small model's arithmetic on them stays meaningful.
REWEIGHT_FEATURES = (
    'layer["position"]',
    '(1.0 - layer["position"])',
    'math.log10(layer["params"])',
    'math.log10(layer["macs"] + 1.0)',
    'layer["in_zero_frac"]',
    'layer["out_zero_frac"]',
    'math.log10(layer["in_p999"] / (layer["in_std"] + 1e-9) + 1.0)',
    'math.log10(layer["out_p999"] / (layer["out_std"] + 1e-9) + 1.0)',
    'float(layer["op_class"] == "dwconv")',
    'float(layer["op_class"] == "fc")',
    'float(layer["index"] == 0)',
    'float(layer["index"] == layer["num_layers"] - 1)',
    'layer["param_share"]',
    'layer["mac_share"]',
    'math.log10(layer["in_kurtosis"] + 1.0)',
    'math.log10(layer["qerr_hessian"][1] / (layer["out_sq"] + 1e-30) + 1e-9)',
)

#: llama.cpp GBNF grammar of a ``reweight`` edit (mutation / crossover under ``--grammar reweight``): the model
#: writes a per-layer weight (an expression over :data:`REWEIGHT_FEATURES` and constants) and the power that
#: shapes how the parent's cost falls with the width; :func:`apply_reweight` applies both to the parent's
#: costs. This is the paper's "change the allocation parameters" mutation in a form a 135M model gets right.
REWEIGHT_GRAMMAR = (
    'root ::= "REASONING: " reason "\\n\\n```python\\nlayer_weight = " expr "\\nwidth_power = " power "\\n```"\n'
    'reason ::= [^\\n`]{8,300}\n'
    'expr ::= term (" " op " " term){0,3}\n'
    'op ::= "+" | "-" | "*"\n'
    'term ::= num | feat | num " * " feat\n'
    'num ::= [0-9] "." [0-9] [0-9]?\n'
    'power ::= ("0." [5-9] | "1." [0-4]) [0-9]?\n'
    "feat ::= " + " | ".join(_gbnf_literal(f) for f in REWEIGHT_FEATURES) + "\n"
)

def bounded_tree(code: str) -> ast.Module | None:
    """The syntax tree of ``code`` (:func:`~tap_edge.plan.proxies.sandbox.parse_program`: size and nesting
    bounded), or None when it does not parse or is too big or too deep."""
    try:
        return parse_program(code)
    except SandboxRejection:
        return None


def split_at_final_return(code: str) -> tuple[list[str], list[str], list[str]] | None:
    """(lines before the final ``return`` of ``proxy``, the lines from it on, names assigned in ``proxy``), or
    None when ``proxy`` does not end with a top-level return (or the code does not parse within the bounds)."""
    tree = bounded_tree(code)
    if tree is None:
        return None
    fns = [s for s in tree.body if isinstance(s, ast.FunctionDef) and s.name == "proxy"]
    if not fns or not fns[-1].body or not isinstance(fns[-1].body[-1], ast.Return):
        return None
    fn = fns[-1]
    ret = fn.body[-1]
    lines = code.splitlines()
    names = sorted({t.id for node in ast.walk(fn) if isinstance(node, ast.Assign | ast.AugAssign | ast.For)
                    for t in ast.walk(node.target if not isinstance(node, ast.Assign) else node)
                    if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)})
    return lines[:ret.lineno - 1], lines[ret.lineno - 1:], names


def _cut(text: str, limit: int = MAX_PROMPT_CODE_CHARS) -> str:
    return text if len(text) <= limit else text[:limit].rstrip() + f"\n# ... ({len(text) - limit} more characters)"


def compact_code(code: str) -> str:
    """The program without docstrings and comments (what prompts show of a parent: small models have small
    contexts), at most :data:`MAX_PROMPT_CODE_CHARS` characters; the original text (cut to that) when it does
    not parse within the bounds."""
    tree = bounded_tree(code)
    if tree is None:
        return _cut(code.strip())
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(node, ast.Module | ast.FunctionDef) and body and isinstance(body[0], ast.Expr) \
                and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
            node.body = body[1:] or [ast.Pass()]
    try:
        return _cut(ast.unparse(tree).strip())
    except (RecursionError, MemoryError, ValueError):  # bounded trees unparse; this is the last guard
        return _cut(code.strip())


def apply_edit(parent_code: str, edit: str) -> str | None:
    """Insert ``edit`` (dedented lines) before the final ``return`` of the parent's ``proxy``; None if the parent
    has no such return."""
    parts = split_at_final_return(parent_code)
    if parts is None:
        return None
    head, tail, _ = parts
    indent = tail[0][:len(tail[0]) - len(tail[0].lstrip())]
    new = [indent + ln if ln.strip() else "" for ln in normalize_edit(edit)]
    return "\n".join([*head, *new, *tail]).rstrip() + "\n"


def apply_reweight(parent_code: str, edit: str) -> str | None:
    """Apply a ``reweight`` edit (``layer_weight = EXPR`` and ``width_power = NUMBER``) to the parent: its final
    ``return COSTS`` becomes ``return [w * c ** p for c in COSTS]`` with ``w`` = the layer weight clipped to
    [0.2, 5] and ``p`` the power clipped to [0.5, 1.5] (children stay near their parent: a first search with
    [0.05, 20] and [0.25, 2] gave mostly much worse children). None when the edit is not exactly these two
    assignments or the parent has no final return."""
    parent_tree = bounded_tree(parent_code)
    if parent_tree is None or split_at_final_return(parent_code) is None:
        return None
    tree = bounded_tree(textwrap.dedent(edit).strip())
    if tree is None:
        return None
    assigned = {t.id for st in tree.body if isinstance(st, ast.Assign) for t in st.targets if isinstance(t, ast.Name)}
    if len(tree.body) != 2 or not all(isinstance(st, ast.Assign) for st in tree.body) \
            or assigned != {"layer_weight", "width_power"}:
        return None
    fn = [st for st in parent_tree.body if isinstance(st, ast.FunctionDef) and st.name == "proxy"][-1]
    ret = fn.body[-1]
    assert isinstance(ret, ast.Return)
    if ret.value is None:
        return None
    lines = parent_code.splitlines()
    first = lines[ret.lineno - 1]
    indent = first[:len(first) - len(first.lstrip())]
    try:
        costs, assignments = ast.unparse(ret.value), [ast.unparse(st) for st in tree.body]
    except (RecursionError, MemoryError, ValueError):  # bounded trees unparse; this is the last guard
        return None
    new = [f"{indent}parent_costs = [max(0.0, float(c)) for c in {costs}]"] + [
        indent + st for st in assignments] + [
        f"{indent}layer_weight = min(5.0, max(0.2, float(layer_weight)))",
        f"{indent}width_power = min(1.5, max(0.5, float(width_power)))",
        f"{indent}return [layer_weight * c ** width_power for c in parent_costs]",
    ]
    return "\n".join([*lines[:ret.lineno - 1], *new, *lines[ret.end_lineno or ret.lineno:]]).rstrip() + "\n"


def normalize_edit(edit: str) -> list[str]:
    """The lines of an edit, undoing what small models do instead of following the edit instructions: a whole
    ``def proxy(...)`` is replaced by its body, and imports are dropped (numpy and math are already there)."""
    lines = textwrap.dedent(edit).strip("\n").splitlines()
    for i, ln in enumerate(lines):
        if ln.lstrip().startswith("def proxy"):
            ind = len(ln) - len(ln.lstrip())
            body = []
            for nxt in lines[i + 1:]:
                if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= ind:
                    break
                body.append(nxt)
            lines = textwrap.dedent("\n".join(body)).strip("\n").splitlines()
            break
    return [ln for ln in lines if not ln.lstrip().startswith(("import ", "from "))]


@dataclass(frozen=True)
class GrammarMode:
    """One ``--grammar`` mode. ``program``: the GBNF grammar of a whole program (init, and a mutation /
    crossover child that rewrites its parent). Edit modes also make mutation / crossover children as edits of
    their first parent: ``edit`` is the edit's grammar, ``suffix`` the template that asks for it, ``apply``
    turns (parent code, edit) into the child (None: not applicable) and ``refusal`` says why it was not."""

    program: str | None
    edit: str | None = None
    suffix: str | None = None
    apply: Callable[[str, str], str | None] | None = None
    refusal: str = ""


#: ``--grammar``: off | full (header forced) | score (skeleton forced) | edit (score skeleton for init;
#: mutation and crossover insert 1-8 lines before the parent's final return, see :func:`apply_edit`) |
#: reweight (score skeleton for init; mutation and crossover reweight the parent's costs per layer and
#: reshape their fall with the width, see :func:`apply_reweight`).
GRAMMARS: dict[str, GrammarMode] = {
    "off": GrammarMode(None),
    "full": GrammarMode(PROXY_GRAMMAR),
    "score": GrammarMode(SCORE_GRAMMAR),
    "edit": GrammarMode(SCORE_GRAMMAR, EDIT_GRAMMAR, "edit", apply_edit,
                        "the parent has no final return to insert the edit before"),
    "reweight": GrammarMode(SCORE_GRAMMAR, REWEIGHT_GRAMMAR, "reweight", apply_reweight,
                            "the edit is not 'layer_weight = ...' and 'width_power = ...'"),
}
#: Templates appended to a mutation / crossover prompt in the edit modes.
EDIT_SUFFIXES = tuple(m.suffix for m in GRAMMARS.values() if m.suffix)


def grammar_mode(name: str) -> GrammarMode:
    """The ``--grammar`` mode ``name``, or a one-line error listing the modes."""
    try:
        return GRAMMARS[name]
    except KeyError:
        raise UserError(f"unknown --grammar '{name}'", f"use one of {', '.join(GRAMMARS)}") from None


def grammar_for(mode: str, template: str) -> str | None:
    """The GBNF grammar sent for ``template`` under ``--grammar mode`` (when a mutation / crossover child is
    an edit of its parent; a child that rewrites its parent gets ``program``)."""
    m = grammar_mode(mode)
    return m.edit if m.edit is not None and template in ("mutation", "crossover") else m.program


def load_templates(folder: str | Path | None = None) -> dict[str, str]:
    """Read the three templates and the edit-mode suffixes (from ``folder`` when given, else the packaged ones).
    A folder that is missing, or lacks one of the three templates, or holds one that is not UTF-8 text, is a
    one-line error naming the file."""
    out: dict[str, str] = {}
    hint = ("a --templates folder holds evolve_init.txt, evolve_mutation.txt and evolve_crossover.txt (copy "
            "them from tap_edge/templates and edit them)")
    if folder is not None and not Path(folder).is_dir():
        raise UserError(f"--templates {folder}: not a folder", hint)
    for name in (*TEMPLATES, *EDIT_SUFFIXES):
        fname = f"evolve_{name}.txt"
        path = Path(folder) / fname if folder is not None else None
        if path is not None and (name in TEMPLATES or path.is_file()):
            try:
                out[name] = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                raise UserError(f"--templates {folder}: no {fname} there", hint) from None
            except (OSError, UnicodeDecodeError) as e:
                raise UserError(f"{path}: cannot read the template ({one_line(e, 100)})", hint) from None
        else:  # the edit-mode suffixes fall back to the packaged ones
            out[name] = resources.files("tap_edge").joinpath("templates", fname).read_text(encoding="utf-8")
    return out


def templates_digest(templates: dict[str, str]) -> str:
    h = hashlib.sha256()
    for k in TEMPLATES:
        h.update(templates[k].encode())
    return h.hexdigest()[:16]


def render(template: str, **fields: object) -> str:
    return string.Template(template).safe_substitute({k: str(v) for k, v in fields.items()})


@dataclass
class ParsedReply:
    """Reasoning T and code C from one reply; ``problem`` says why no code was found."""

    reasoning: str
    code: str | None
    problem: str | None = None


_THINK = re.compile(r"<think>.*?(</think>|\Z)", re.S | re.I)
_FENCE = re.compile(r"```[ \t]*([\w+.-]*)[^\n]*\n(.*?)(?:\n[ \t]*```|\Z)", re.S)
_REASON = re.compile(r"(?:^|\n)\s*\**\s*(?:REASONING|Reasoning|THOUGHT|Thought|T)\s*\**\s*[:\-]\s*", re.S)
_CODE_START = re.compile(r"^(import |from |def |[A-Z_][A-Z0-9_]* *=)")


def _parses(code: str) -> bool:
    return bounded_tree(code) is not None


def _trim_to_parse(code: str, max_drop: int = 15) -> str:
    """Drop trailing unindented lines (prose after the code) until the code parses; code lines (indented) are
    never dropped, so a broken program stays broken and its error is reported rather than silently changed."""
    lines = code.rstrip().splitlines()
    for k in range(min(max_drop, len(lines) - 1) + 1):
        if k and lines[len(lines) - k][:1] in (" ", "\t"):
            break
        cand = "\n".join(lines[:len(lines) - k]).rstrip() + "\n"
        if _parses(cand):
            return cand
    return code.rstrip() + "\n"


def _bare_code(text: str) -> str | None:
    """Code without fences: from the imports above ``def proxy`` to the last line that belongs to code."""
    lines = text.splitlines()
    idx = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("def proxy")), None)
    if idx is None:
        return None
    start = idx
    while start > 0 and (_CODE_START.match(lines[start - 1].lstrip()) or not lines[start - 1].strip()):
        start -= 1
    indent = len(lines[idx]) - len(lines[idx].lstrip())
    end = idx + 1
    while end < len(lines):
        ln = lines[end]
        if ln.strip() and (len(ln) - len(ln.lstrip())) <= indent and not _CODE_START.match(ln.lstrip()) \
                and not ln.lstrip().startswith(("#", "return", "else", "elif")):
            break
        end += 1
    return textwrap.dedent("\n".join(lines[start:end]))


def parse_reply(text: str | None, edit: bool = False) -> ParsedReply:
    """Split a reply into reasoning and code, tolerantly (see the module docstring). ``edit``: the code is a
    few lines to insert into a parent (any code block counts; no ``def proxy`` needed, no trimming)."""
    raw = (text or "").replace("\r\n", "\n")
    if len(raw) > MAX_REPLY_CHARS:
        return ParsedReply("", None, f"reply too long ({len(raw)} characters > {MAX_REPLY_CHARS}), not read")
    body = _THINK.sub("", raw).strip()
    if not body:
        return ParsedReply("", None, "empty reply")
    blocks = [(m.group(1).lower(), m.group(2), m.start(), m.end()) for m in _FENCE.finditer(body)]
    chosen = None
    for pred in (lambda b: "def proxy" in b[1], lambda b: "def " in b[1], lambda b: b[0] in ("python", "py")):
        chosen = next((b for b in blocks if pred(b)), None)
        if chosen:
            break
    if edit:
        chosen = chosen or (blocks[0] if blocks else None)
        if chosen is None or not chosen[1].strip():
            return ParsedReply(_reasoning(body, ""), None, "no code block in the reply")
        return ParsedReply(_reasoning(body[:chosen[2]], body[chosen[3]:]), textwrap.dedent(chosen[1]).strip("\n"))
    if chosen:
        code = textwrap.dedent(chosen[1])
        before, after = body[:chosen[2]], body[chosen[3]:]
    else:
        code = _bare_code(body)
        if code is None:
            return ParsedReply(_reasoning(body, ""), None, "no code in the reply (prose only)")
        pos = body.find(code.splitlines()[0].strip()) if code.strip() else -1
        before, after = (body[:pos], "") if pos > 0 else ("", "")
    code = _trim_to_parse(code)
    if not code.strip():
        return ParsedReply(_reasoning(before, after), None, "empty code block")
    return ParsedReply(_reasoning(before, after), code)


def _reasoning(before: str, after: str) -> str:
    m = list(_REASON.finditer(before))
    text = before[m[-1].end():] if m else before
    if not text.strip():
        m2 = _REASON.search(after)
        text = after[m2.end():] if m2 else after
    text = re.sub(r"```.*", "", text, flags=re.S)
    return one_line(text, 1000)
