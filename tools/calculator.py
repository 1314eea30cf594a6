"""Calculator tool: exact arithmetic by walking a whitelisted `ast`, never `eval`.

The expression is parsed with `ast.parse(..., mode='eval')` and only the node types below are
interpreted; everything else is refused with a `ModelRetry` whose message tells the model how to
fix its input. Integers stay integers, `/` between exact numbers gives a `Fraction`, and a float
appears only when the expression contains one (a literal like `0.5`, `pi`, or a float function).

Anything that could take unbounded time or memory is checked *before* it runs: expression length,
nesting depth, exponent size, estimated result bits, the factorial argument, and a work budget
over the whole evaluation, so every refusal comes back within milliseconds.
"""

from __future__ import annotations

import ast
import decimal
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from typing import Annotated, Any, TypeGuard

from pydantic import Field
from pydantic_ai import FunctionToolset, ModelRetry

from tandem.tools.registry import SIDE_EFFECT_KEY, ToolsetPlugin

__all__ = ['MAX_EXPRESSION_CHARS', 'calculate', 'calculator_toolset', 'plugin']

Number = int | Fraction | float
"""A value during evaluation. `Fraction`s whose denominator is 1 are normalised to `int`."""

MAX_EXPRESSION_CHARS = 1_000
_MAX_DEPTH = 100
_MAX_EXPONENT = 10_000
_MAX_INT_BITS = 100_000  # ~30,000 decimal digits; big-int ops stay in the low milliseconds
_MAX_WORK_BITS = 1_000_000  # summed operand sizes over one evaluation, to bound the total time
_MAX_FACTORIAL = 1_000
_MAX_ROUND_DIGITS = 100
_MAX_MINMAX_ARGS = 100
# CPython refuses int->str beyond 4300 digits by default; 13,000 bits is ~3,900 digits.
_MAX_SHOWN_BITS = 13_000
_APPROX_DIGITS = 12
_APPROX_CONTEXT = decimal.Context(prec=_APPROX_DIGITS, Emax=decimal.MAX_EMAX, Emin=decimal.MIN_EMIN)

_SYNTAX_HELP = 'Write one arithmetic expression using numbers, + - * / // % ** and parentheses, e.g. (2 + 3) * 4.'
_FLOAT_OVERFLOW = 'The result is too large for a float (over about 1.8e308).'
_CONSTANTS: dict[str, float] = {'pi': math.pi, 'e': math.e}


# No `max_length` in the schema on purpose: pydantic's length error would echo the whole oversized
# input back into the model's context; the check in the body answers in one short line instead.
# The examples show real models the syntax, and are what pydantic-ai's TestModel sends.
def calculate(expression: Annotated[str, Field(examples=['2**100', '(17 * 23) / 4'])]) -> str:
    """Evaluate an arithmetic expression exactly. Use it for any arithmetic instead of computing mentally.

    Syntax is Python's: `+ - * / // % **` and parentheses. Use `**` for powers (`^` is not a power).
    No variables, strings, lists, comparisons or thousands separators.

    Functions: abs(x), round(x) or round(x, ndigits), min(a, b, ...), max(a, b, ...), sqrt(x),
    floor(x), ceil(x), log(x) or log(x, base), log10(x), exp(x), sin(x), cos(x), tan(x) (radians),
    factorial(n) for whole n from 0 to 1000. Constants: pi, e.

    Whole numbers and fractions are exact: `2**100` returns every digit, `1/3*3` returns `1`, and `1/3`
    returns `0.333333333333 (exactly 1/3)`. A number with a decimal point, pi, e, and functions
    like sqrt(2) or sin(x) give floats, which are approximate: `0.1 + 0.2` returns `0.30000000000000004`.
    Exact integer results are limited to about 30,000 digits and exponents to 10,000.

    Args:
        expression: The arithmetic expression, at most 1000 characters.
    """
    # Before anything else, so a huge input is refused in microseconds and never reaches ast.parse.
    if len(expression) > MAX_EXPRESSION_CHARS:
        raise ModelRetry(
            f'The expression is {len(expression)} characters long; the limit is {MAX_EXPRESSION_CHARS}. '
            'Split the calculation into smaller steps.'
        )
    text = expression.strip()
    if not text:
        raise ModelRetry(f'The expression is empty. {_SYNTAX_HELP}')
    try:
        tree = ast.parse(text, mode='eval')
    except SyntaxError as exc:
        where = f' at column {exc.offset}' if exc.offset else ''
        raise ModelRetry(f'Could not parse the expression: {exc.msg}{where}. {_SYNTAX_HELP}') from None
    except (ValueError, RecursionError, MemoryError):
        # ValueError: NUL bytes; the others: pathological nesting the parser itself refuses.
        raise ModelRetry(f'Could not parse the expression. {_SYNTAX_HELP}') from None
    return _render(_Evaluator().evaluate(tree.body))


def calculator_toolset() -> FunctionToolset[Any]:
    """Build the calculator toolset: one side-effect-free `calculate` tool."""
    toolset = FunctionToolset[Any](id='calc')
    toolset.add_function(calculate, metadata={SIDE_EFFECT_KEY: False})
    return toolset


plugin = ToolsetPlugin(
    name='calc',
    description='Exact arithmetic: integers, fractions, powers, roots, logs and trigonometry.',
    build=calculator_toolset,
)


# --- evaluation --------------------------------------------------------------------------------


class _Evaluator:
    """One evaluation: walks the tree and keeps the big-number work budget."""

    def __init__(self) -> None:
        # Each exact operation spends the bit sizes of its operands; the per-value limit alone
        # would still let ~50 near-limit fraction additions (gcds on 100k-bit numbers) run long.
        self._work_left = _MAX_WORK_BITS

    def evaluate(self, node: ast.expr, depth: int = 0) -> Number:
        if depth > _MAX_DEPTH:
            raise ModelRetry(f'The expression is nested more than {_MAX_DEPTH} levels deep; simplify it.')
        match node:
            case ast.Constant(value=value):
                return _literal(value)
            case ast.BinOp():
                return self._binop(node, depth)
            case ast.UnaryOp(op=ast.USub(), operand=operand):
                return _checked(-self.evaluate(operand, depth + 1))
            case ast.UnaryOp(op=ast.UAdd(), operand=operand):
                return self.evaluate(operand, depth + 1)
            case ast.Name(id=name):
                return _constant(name)
            case ast.Call():
                return self._call(node, depth)
            case _:
                raise ModelRetry(_unsupported(node))

    def _binop(self, node: ast.BinOp, depth: int) -> Number:
        # Walk the left spine in a loop, so a long sum like `1 + 2 + ... + 300` (which Python parses
        # as 300 left-nested nodes) doesn't count against the nesting limit.
        spine: list[ast.BinOp] = []
        current: ast.expr = node
        while isinstance(current, ast.BinOp):
            spine.append(current)
            current = current.left
        result = self.evaluate(current, depth + 1)
        for binop in reversed(spine):
            result = self._apply(binop.op, result, self.evaluate(binop.right, depth + 1))
        return result

    def _apply(self, op: ast.operator, left: Number, right: Number) -> Number:
        symbol = _OPERATOR_SYMBOLS.get(type(op), type(op).__name__)
        if isinstance(op, ast.BitXor):
            raise ModelRetry('^ is not a power operator here; use ** for powers, e.g. 2**10.')
        if not isinstance(op, ast.Add | ast.Sub | ast.Mult | ast.Div | ast.FloorDiv | ast.Mod | ast.Pow):
            raise ModelRetry(f'The operator {symbol} is not supported. Supported operators: + - * / // % **.')
        if isinstance(op, ast.Pow):
            return self._power(left, right)
        if isinstance(op, ast.Div | ast.FloorDiv | ast.Mod) and right == 0:
            raise ModelRetry(f'Division by zero: the right-hand side of {symbol} is 0.')
        if _is_exact(left) and _is_exact(right):
            self._charge(_bits(left) + _bits(right))
            # int +, -, //, % can't outgrow their operands; products and fraction arithmetic can
            # reach the sum of the operand sizes, so refuse those before computing them.
            grows = isinstance(op, ast.Mult) or not (isinstance(left, int) and isinstance(right, int))
            if grows and _bits(left) + _bits(right) > _MAX_INT_BITS:
                raise ModelRetry(_too_big_message())
        try:
            match op:
                case ast.Add():
                    result = left + right
                case ast.Sub():
                    result = left - right
                case ast.Mult():
                    result = left * right
                case ast.Div():
                    exact = _is_exact(left) and _is_exact(right)
                    result = Fraction(left) / Fraction(right) if exact else left / right
                case ast.FloorDiv():
                    result = left // right
                case _:
                    result = left % right
        except OverflowError:  # a huge exact number meeting a float
            raise ModelRetry(_FLOAT_OVERFLOW) from None
        return _checked(result)

    def _power(self, base: Number, exponent: Number) -> Number:
        if base == 0 and exponent < 0:
            raise ModelRetry('Division by zero: 0 raised to a negative power.')
        if isinstance(exponent, int) and _is_exact(base):
            if abs(exponent) > _MAX_EXPONENT:
                raise ModelRetry(
                    f'The exponent {_short(exponent)} is too large: exact powers allow exponents from '
                    f'-{_MAX_EXPONENT} to {_MAX_EXPONENT}. For an estimate, use a float base (2.0**x) or logarithms.'
                )
            # bit_length * exponent over-estimates the result size, which is the safe direction.
            estimated_bits = _bits(base) * abs(exponent)
            if estimated_bits > _MAX_INT_BITS:
                raise ModelRetry(_too_big_message())
            self._charge(estimated_bits)
            # Fraction keeps negative powers exact, where int ** -2 would be a float.
            return _checked(Fraction(base) ** exponent)
        # Float powers cost the same whatever the exponent, so only their range needs checking.
        float_exponent = _as_float(exponent)
        if base < 0 and not float_exponent.is_integer():
            raise ModelRetry('A negative number raised to a fractional power has no real result.')
        try:
            result = _as_float(base) ** float_exponent
        except OverflowError:
            raise ModelRetry(_FLOAT_OVERFLOW) from None
        return _checked(result)

    def _call(self, node: ast.Call, depth: int) -> Number:
        if not isinstance(node.func, ast.Name):
            if isinstance(node.func, ast.Attribute):
                raise ModelRetry(_unsupported(node.func))
            raise ModelRetry(f'Only the listed functions can be called, by bare name, e.g. sqrt(2). {_SYNTAX_HELP}')
        name = node.func.id
        function = _FUNCTIONS.get(name)
        if function is None:
            raise ModelRetry(f'Unknown function {name!r}. Known functions: {", ".join(_FUNCTIONS)}.')
        if node.keywords:
            raise ModelRetry(f'Keyword arguments are not supported; call it as {function.usage}.')
        if any(isinstance(arg, ast.Starred) for arg in node.args):
            raise ModelRetry(f'*-unpacking is not supported; call it as {function.usage}.')
        if not function.min_args <= len(node.args) <= function.max_args:
            raise ModelRetry(f'{name} got {len(node.args)} argument(s); call it as {function.usage}.')
        args = [self.evaluate(arg, depth + 1) for arg in node.args]
        self._charge(sum(_bits(arg) for arg in args))
        try:
            return _checked(function.impl(*args))
        except OverflowError:
            raise ModelRetry(f'{name}: {_FLOAT_OVERFLOW}') from None
        except (ValueError, ZeroDivisionError) as exc:
            # The impls pre-check their domains; this catches whatever math still refuses.
            raise ModelRetry(f'{name} cannot be computed for these arguments: {exc}.') from None

    def _charge(self, bits: int) -> None:
        self._work_left -= bits
        if self._work_left < 0:
            raise ModelRetry(
                'The expression does too much exact big-number arithmetic. Split it into smaller '
                'calculations, or use floats (e.g. 2.0 instead of 2) for an approximate answer.'
            )


def _literal(value: object) -> Number:
    # bool is an int subclass, and complex/str/bytes/None/... are constants too: only plain numbers pass.
    if isinstance(value, bool) or not isinstance(value, int | float):
        if isinstance(value, complex):
            raise ModelRetry('Complex numbers (like 2j) are not supported; only real numbers are.')
        if isinstance(value, str | bytes):
            raise ModelRetry(f'Strings are not supported. {_SYNTAX_HELP}')
        raise ModelRetry(f'{value!r} is not a number. {_SYNTAX_HELP}')
    if isinstance(value, float) and not math.isfinite(value):
        raise ModelRetry('A number in the expression is too large for a float (over about 1.8e308).')
    return value


def _constant(name: str) -> Number:
    if name in _CONSTANTS:
        return _CONSTANTS[name]
    if name in _FUNCTIONS:
        raise ModelRetry(f'{name} is a function; call it with parentheses, e.g. {name}(2).')
    raise ModelRetry(
        f'Unknown name {name!r}. The calculator has no variables: substitute the number. '
        f'Known constants: {", ".join(_CONSTANTS)}. Known functions: {", ".join(_FUNCTIONS)}.'
    )


def _unsupported(node: ast.AST) -> str:
    match node:
        case ast.Attribute(attr=attr):
            return f'Attribute access (.{attr}) is not allowed. Call the listed functions by their bare name, e.g. sqrt(2).'
        case ast.Subscript():
            return 'Indexing with [...] is not supported.'
        case ast.ListComp() | ast.SetComp() | ast.DictComp() | ast.GeneratorExp():
            return 'Comprehensions are not supported. Write the numbers out, e.g. max(1, 2, 3).'
        case ast.Lambda():
            return 'Lambdas are not supported.'
        case ast.Tuple() | ast.List() | ast.Set() | ast.Dict():
            return (
                'Tuples, lists, sets and dicts are not supported. Pass several numbers straight to min or max, '
                'e.g. max(1, 2, 3), and write numbers without thousands separators (1000, not 1,000).'
            )
        case ast.Compare() | ast.BoolOp() | ast.UnaryOp(op=ast.Not()):
            return 'Comparisons and boolean logic are not supported; the calculator only computes numbers.'
        case ast.IfExp():
            return 'Conditional expressions (x if c else y) are not supported.'
        case ast.NamedExpr():
            return 'Assignments (:=) are not supported; the calculator has no variables.'
        case ast.JoinedStr() | ast.FormattedValue():
            return 'Strings are not supported.'
        case ast.UnaryOp(op=ast.Invert()):
            return 'The bitwise operator ~ is not supported.'
        case _:
            return f'{type(node).__name__} expressions are not supported. {_SYNTAX_HELP}'


_OPERATOR_SYMBOLS: dict[type[ast.operator], str] = {
    ast.Add: '+',
    ast.Sub: '-',
    ast.Mult: '*',
    ast.Div: '/',
    ast.FloorDiv: '//',
    ast.Mod: '%',
    ast.Pow: '**',
    ast.LShift: '<<',
    ast.RShift: '>>',
    ast.BitOr: '|',
    ast.BitAnd: '&',
    ast.BitXor: '^',
    ast.MatMult: '@',
}


# --- functions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Function:
    min_args: int
    max_args: int
    impl: Callable[..., Number]
    usage: str


def _abs(x: Number) -> Number:
    return abs(x)


def _round(x: Number, ndigits: Number | None = None) -> Number:
    if ndigits is None:
        return round(x)
    if not isinstance(ndigits, int) or abs(ndigits) > _MAX_ROUND_DIGITS:
        # A huge ndigits would make Fraction.__round__ build 10**ndigits.
        raise ModelRetry(f'round needs a whole number of digits from -{_MAX_ROUND_DIGITS} to {_MAX_ROUND_DIGITS}.')
    return round(x, ndigits)


def _min(*args: Number) -> Number:
    return min(args)


def _max(*args: Number) -> Number:
    return max(args)


def _sqrt(x: Number) -> Number:
    if x < 0:
        raise ModelRetry('sqrt of a negative number has no real result.')
    # Perfect squares (and squares of fractions) stay exact: sqrt(16) is 4, sqrt(1/4) is 1/2.
    if isinstance(x, int):
        root = math.isqrt(x)
        if root * root == x:
            return root
    elif isinstance(x, Fraction):
        num_root, den_root = math.isqrt(x.numerator), math.isqrt(x.denominator)
        if num_root * num_root == x.numerator and den_root * den_root == x.denominator:
            return Fraction(num_root, den_root)
    return math.sqrt(_as_float(x))


def _floor(x: Number) -> Number:
    return math.floor(x)


def _ceil(x: Number) -> Number:
    return math.ceil(x)


def _log(x: Number, base: Number | None = None) -> Number:
    if x <= 0:
        raise ModelRetry('log is only defined for positive numbers.')
    if base is None:
        return _log_exact_aware(x, math.log)
    if base <= 0 or base == 1:
        raise ModelRetry('The base of log must be positive and not 1.')
    return _log_exact_aware(x, math.log) / _log_exact_aware(base, math.log)


def _log10(x: Number) -> Number:
    if x <= 0:
        raise ModelRetry('log10 is only defined for positive numbers.')
    return _log_exact_aware(x, math.log10)


def _log_exact_aware(x: Number, log: Callable[[float], float]) -> float:
    # math.log copes with huge ints but not with huge Fractions (it converts them to float first).
    if isinstance(x, Fraction):
        return log(x.numerator) - log(x.denominator)
    return log(x)


def _exp(x: Number) -> Number:
    return math.exp(_as_float(x))


def _sin(x: Number) -> Number:
    return math.sin(_as_float(x))


def _cos(x: Number) -> Number:
    return math.cos(_as_float(x))


def _tan(x: Number) -> Number:
    return math.tan(_as_float(x))


def _factorial(n: Number) -> Number:
    if isinstance(n, float) and n.is_integer():
        n = int(n)
    if not isinstance(n, int) or not 0 <= n <= _MAX_FACTORIAL:
        raise ModelRetry(f'factorial needs a whole number from 0 to {_MAX_FACTORIAL}, got {_render(n)}.')
    return math.factorial(n)


_FUNCTIONS: dict[str, _Function] = {
    'abs': _Function(1, 1, _abs, 'abs(x)'),
    'round': _Function(1, 2, _round, 'round(x) or round(x, ndigits)'),
    'min': _Function(1, _MAX_MINMAX_ARGS, _min, 'min(a, b, ...)'),
    'max': _Function(1, _MAX_MINMAX_ARGS, _max, 'max(a, b, ...)'),
    'sqrt': _Function(1, 1, _sqrt, 'sqrt(x)'),
    'floor': _Function(1, 1, _floor, 'floor(x)'),
    'ceil': _Function(1, 1, _ceil, 'ceil(x)'),
    'log': _Function(1, 2, _log, 'log(x) or log(x, base)'),
    'log10': _Function(1, 1, _log10, 'log10(x)'),
    'exp': _Function(1, 1, _exp, 'exp(x)'),
    'sin': _Function(1, 1, _sin, 'sin(x)'),
    'cos': _Function(1, 1, _cos, 'cos(x)'),
    'tan': _Function(1, 1, _tan, 'tan(x)'),
    'factorial': _Function(1, 1, _factorial, 'factorial(n)'),
}


# --- numbers -----------------------------------------------------------------------------------


def _is_exact(x: Number) -> TypeGuard[int | Fraction]:
    return isinstance(x, int | Fraction)


def _bits(x: Number) -> int:
    if isinstance(x, int):
        return x.bit_length()
    if isinstance(x, Fraction):
        return max(x.numerator.bit_length(), x.denominator.bit_length())
    return 0


def _as_float(x: Number) -> float:
    try:
        return float(x)
    except OverflowError:
        raise ModelRetry(f'{_render(x)} is too large to convert to a float for this operation.') from None


def _checked(x: Number) -> Number:
    """Normalise an integral Fraction to int and enforce the size and finiteness limits."""
    if isinstance(x, Fraction) and x.denominator == 1:
        x = x.numerator
    if isinstance(x, float):
        if math.isnan(x):
            raise ModelRetry('The result is not a number (NaN).')
        if math.isinf(x):
            raise ModelRetry(_FLOAT_OVERFLOW)
    elif _bits(x) > _MAX_INT_BITS:
        raise ModelRetry(_too_big_message())
    return x


def _too_big_message() -> str:
    return (
        f'An exact intermediate result would exceed {_MAX_INT_BITS:,} bits (about 30,000 digits). '
        'Use a float (e.g. 2.0 instead of 2) or logarithms for an approximate answer.'
    )


def _short(n: int) -> str:
    return str(n) if n.bit_length() <= 64 else _approximate(n)


def _approximate(x: int | Fraction) -> str:
    """12 significant digits, via Decimal so huge values never overflow a float."""
    if isinstance(x, int):
        value = _APPROX_CONTEXT.plus(decimal.Decimal(x))
    else:
        value = _APPROX_CONTEXT.divide(decimal.Decimal(x.numerator), decimal.Decimal(x.denominator))
    mantissa, exponent_marker, exponent = f'{value:.{_APPROX_DIGITS}g}'.partition('e')
    # Decimal keeps trailing zeros that float formatting would drop ("1.00000000000e+10000").
    if '.' in mantissa:
        mantissa = mantissa.rstrip('0').rstrip('.')
    return mantissa + exponent_marker + exponent


def _render(x: Number) -> str:
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, int):
        if x.bit_length() <= _MAX_SHOWN_BITS:
            return str(x)
        digits = decimal.Decimal(x).adjusted() + 1
        return f'{_approximate(x)} (an exact integer with {digits} digits, too long to show in full)'
    exact = (
        f'exactly {x.numerator}/{x.denominator}'
        if x.numerator.bit_length() + x.denominator.bit_length() <= _MAX_SHOWN_BITS
        else 'rounded; the exact fraction is too long to show'
    )
    return f'{_approximate(x)} ({exact})'
